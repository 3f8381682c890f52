"""The handshake phase of a connection: the HTTP head in, the flow started."""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import RejectConnection, Request

from socker_core import Flow, OutgoingLedger, ReplayBuffer, ResumeSession, Stepper
from socker_core._codes import CloseCode
from socker_core._resume import Claimed

from . import deflate
from .events import AwaitHandshake, Opened, Phase
from .handshake import _accept_response, _check_accept_response, _read_request, _valid_key
from .hooks import HandshakeRequest
from .http1 import _STATUS_LINE_101, _h11_fields, _h11_head, _http_response, _Refused
from .open_phase import _OpenPhase
from .policy import Refused, check_request, handshake_verdict
from .reader import FrameReader
from .resume import (
    RESUME_SUBPROTOCOL,
    WireResume,
    control,
    new_token,
    parse_offer,
    without_token,
)


class _HandshakePhase(_OpenPhase):
    """Before open: the opening handshake on either side, the handshake hook, the flow's start."""

    __slots__ = ()

    def _receive_handshake(self, data: bytes | bytearray, now: float) -> None:
        guard = self._guard
        if guard is None:  # head already complete; waiting on the hook
            self._pending_after_head += data
            return
        status, head, rest = guard.feed(data)
        if status:
            reason = "bad request" if status == 400 else "handshake exceeds header limits"
            self._fail_handshake(0 if self._client else status, reason, now, respond=True)
            return
        if head is None:
            return
        self._guard = None
        if self._client:
            self._client_head(head, rest, now)
        else:
            self._server_head(head, rest, now)

    def _server_head(self, head: bytes, rest: bytes, now: float) -> None:
        request_line, headers, verdict = _read_request(head)
        parts = request_line.split(" ")
        target = parts[1] if len(parts) == 3 else ""
        if "://" in target and not target.startswith("/"):  # absolute-form (RFC 9112 3.2.2)
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        origin = upgrade = None
        protocols = []
        keys = []
        for name, value in headers:
            if name == "origin":
                if origin is None:
                    origin = value
            elif name == "upgrade":
                if upgrade is None:
                    upgrade = value
            elif name == "sec-websocket-key":
                keys.append(value)
            elif name == "sec-websocket-protocol":
                protocols.append(value)
        offered = (
            tuple(p.strip() for p in ",".join(protocols).split(",") if p.strip())
            if protocols
            else ()
        )
        if self._sessions is not None and RESUME_SUBPROTOCOL in offered:
            # The token never reaches a hook or a log: keep it here, strip it there.
            self._resume = WireResume(offer=parse_offer(offered))
            offered = without_token(offered)
            headers = [
                (name, ", ".join(without_token(tuple(v.strip() for v in value.split(",")))))
                if name == "sec-websocket-protocol"
                else (name, value)
                for name, value in headers
            ]
        request = HandshakeRequest(
            path, query, tuple(headers), offered, origin, parts[0], self.remote_address
        )
        self._request = request
        self.path = path
        is_upgrade = upgrade is not None and "websocket" in upgrade.lower()
        if not is_upgrade and self.http_handler is not None and len(parts) == 3:
            try:
                response = self.http_handler(request)
            except Exception as exc:
                self.log.error("%s: http_handler raised", self._label(), exc_info=exc)
                self._fail_handshake(500, "http_handler raised", now, respond=True)
                return
            if response is not None:
                body = b"" if parts[0] == "HEAD" else response.body
                self._write(_http_response(response.status, body, response.all_headers()), now)
                self._fail_handshake(
                    response.status, "plain HTTP request served", now, observed=False
                )
                return
        if isinstance(verdict, _Refused):
            self._fail_handshake(
                verdict.status, verdict.reason, now, respond=True, headers=verdict.headers
            )
            return
        if len(keys) != 1 or not _valid_key(keys[0]):
            self._fail_handshake(400, "invalid Sec-WebSocket-Key", now, respond=True)
            return
        refused = check_request(self.options, self.routes, request)
        if refused is not None:
            self._fail_handshake(refused.status, refused.reason, now, respond=True)
            return
        self._key = verdict
        self._pending_after_head = rest
        if self.handshake_hook is None:
            self._decide(None, now)
            return
        try:
            result = self.handshake_hook(request)
        except Exception as exc:
            self._decide(exc, now)
            return
        if inspect.isawaitable(result):
            self._phase = Phase.HOOK
            self._events.append(AwaitHandshake(result))
            return
        self._decide(result, now)

    def _decide(self, result: object, now: float) -> None:
        request = self._request
        assert request is not None
        verdict = handshake_verdict(result, request, self.options, self.routes)
        if isinstance(verdict, Refused):
            if isinstance(verdict.error, BaseException):
                self.log.error("%s: %s", self._label(), verdict.reason, exc_info=verdict.error)
            elif verdict.error is not None:
                self.log.error("%s: %s", self._label(), verdict.error)
            self._fail_handshake(
                verdict.status,
                verdict.reason,
                now,
                respond=True,
                body=verdict.body,
                headers=verdict.headers,
            )
            return
        flow, subprotocol = verdict.flow, verdict.subprotocol
        offer = self._resume.offer if self._resume is not None else None
        if offer is not None and subprotocol is None and flow.resume_window is not None:
            subprotocol = RESUME_SUBPROTOCOL
        if subprotocol != RESUME_SUBPROTOCOL:
            self._resume = None  # not resumable here: a plain connection
        headers = list(verdict.headers)
        options = self.options
        if options.compression == "deflate":
            offers = [
                value for name, value in request.headers if name == "sec-websocket-extensions"
            ]
            agreed = deflate.server_accept(
                offers,
                server_no_context_takeover=options.server_no_context_takeover,
                client_no_context_takeover=options.client_no_context_takeover,
            )
            if agreed is not None:
                headers = [*headers, ("Sec-WebSocket-Extensions", agreed[0])]
                self._deflate = deflate.Deflate(agreed[1])
        try:
            response = _accept_response(self._key, subprotocol, headers)
        except Exception as exc:  # a header the h11 rules refuse to send
            self.log.error("%s: cannot accept: %s", self._label(), exc)
            self._fail_handshake(500, "cannot build the handshake response", now, respond=True)
            return
        self._write(response, now)
        self.subprotocol = subprotocol
        rest = self._pending_after_head
        if offer is not None and offer.token is not None and self._resume is not None:
            self._resume_server(flow, offer.token, offer.received, now)
        else:
            self._start_flow(flow, now, verdict.state)
        if rest and not self._transport_done:  # frames that came with (or after) the request
            self._pump(self._open_reader().feed(rest), now)

    def _client_head(self, head: bytes, rest: bytes, now: float) -> None:
        start, block, end = _h11_head(head)
        if start is None or _STATUS_LINE_101.fullmatch(start) is None:
            self._client_refused(head + rest, now)
            return
        options = self.options
        offered = options.compression == "deflate"
        extensions: list[str] = []
        try:
            fields = _h11_fields(block)
            resume = self._resume
            subprotocols = options.subprotocols if resume is None else resume.offered
            subprotocol = _check_accept_response(
                fields, self._nonce, subprotocols, extensions if offered else None
            )
            if extensions:
                params = deflate.client_accepted(
                    extensions, client_no_context_takeover=options.client_no_context_takeover
                )
                self._deflate = deflate.Deflate(params)
        except Exception as exc:  # the message says why; a non-ASCII value, for example
            self._fail_handshake(0, f"bad handshake response: {exc}", now)
            return
        self.subprotocol = subprotocol
        flow = self._client_flow
        assert flow is not None
        if resume is not None and subprotocol != RESUME_SUBPROTOCOL:
            self._resume = None  # the server does not resume this route
            if resume.resume_from is not None:
                self._resume_refused_by_server(resume.resume_from, now)
                return
        if resume is not None and resume.resume_from is not None and self._resume is not None:
            self._resume_client(resume.resume_from, now)
        else:
            self._start_flow(flow, now, {})
        trailing = head[end:] + rest
        if trailing and not self._transport_done:  # frames that came with the response
            self._pump(self._open_reader().feed(trailing), now)

    def _client_refused(self, data: bytes, now: float) -> None:
        """Anything but a 101: read (the start of) the answer with wsproto, which gives
        the refusal's status or the reason it is malformed."""
        assert self._client_request is not None
        host, path, extra = self._client_request
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            subprotocols = list(self.options.subprotocols)
            ws.send(Request(host=host, target=path, extra_headers=extra, subprotocols=subprotocols))
            ws.receive_data(data)
            first = next(ws.events(), None)
        except Exception as exc:  # RemoteProtocolError, or a non-ASCII header value
            self._fail_handshake(0, f"bad handshake response: {exc}", now)
            return
        if isinstance(first, RejectConnection):
            self._fail_handshake(first.status_code, "server rejected the handshake", now)
            return
        self._fail_handshake(0, "unexpected handshake response", now)

    def _open_reader(self) -> FrameReader:
        reader = self._reader
        if reader is None:
            options = self.options
            reader = self._reader = FrameReader(
                client=self._client,
                max_size=options.max_size,
                max_fragments=options.max_fragments,
                # On a resumable connection text frames are socker's control messages.
                text=options.accept_text or self._resume is not None,
                deflate=self._deflate,
            )
        return reader

    def _opened_transport(self, now: float) -> HandshakeRequest | None:
        """The transport is open: the handshake's state goes; its request is returned
        (kept as `conn.request`)."""
        self._phase = Phase.OPEN
        self.handshake_status = 101
        self._handshake_deadline = None
        request = self._request  # kept as conn.request; the rest of the handshake goes
        self._drop_handshake_state()
        self._open_reader()
        if self.options.ping_interval is not None:
            self._ping_due = now + self.options.ping_interval
        return request

    def _start_flow(self, flow: Flow, now: float, state: Mapping[str, Any]) -> None:
        request = self._opened_transport(now)
        resume = self._resume
        stepper = Stepper(
            flow,
            max_queue=self.options.max_queue,
            # Unique across processes and machines (connections may be spread over
            # workers): 96 random bits, 16 URL-safe characters.
            id=secrets.token_urlsafe(12),
            registry=self.registry,
            server=self.owner,
            remote_address=self.remote_address,
            request=request,
            replay=None
            if resume is None
            else ReplayBuffer(
                flow.max_resume_buffer,
                # Kept in a shared store: the ledger says where each message came from.
                ledger=None if self._keeper is None or self._client else OutgoingLedger(),
            ),
        )
        if resume is not None:
            if self._client:
                # Named by the server's "session" message.
                resume.session = ResumeSession("", self.path, stepper, 0.0, holder=self)
            else:
                assert self._sessions is not None and flow.resume_window is not None
                token = new_token()
                window = flow.resume_window
                resume.session = ResumeSession(token, self.path, stepper, window, holder=self)
                if self._keeper is None:
                    self._sessions.add(resume.session, now)
                self._write_control(
                    control("session", token=token, window=window, **self._heartbeat()), now
                )
        if state:
            conn_state = stepper.conn.state
            for key, value in state.items():
                setattr(conn_state, key, value)
        stepper.wakeup = self._wakeup
        stepper.run_blocking = self.run_blocking
        if self.stepper_guard is not None:
            stepper.guard = self.stepper_guard
        self.stepper = stepper
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        if self.observer is not None:
            self.observer.opened(stepper, self.path, self.subprotocol, self.peer)
        if self.log.isEnabledFor(logging.INFO):
            self.log.info("%s: open %s (flow %s)", self._label(), self.path, flow.name)
        if self._keeper is not None and resume is not None and resume.session is not None:
            self._keeper.opened(self, resume.session, now)  # before open: on_open's sends wait
        self._stepper_events(stepper.open(now), now)

    # -- resume ------------------------------------------------------------------

    def _resume_server(self, flow: Flow, token: str, peer_received: int, now: float) -> None:
        """A client presents a session token: take the session over, or refuse with
        its code (after the 101: a browser sees close codes, never HTTP statuses).
        With a keeper (sessions in a shared store) the keeper looks the token up."""
        if self._keeper is not None:
            self._lookup(flow, token, peer_received, now)
            return
        self._opened_transport(now)
        resume = self._resume
        assert resume is not None and self._sessions is not None
        answer = self._sessions.claim(token, self.path, flow, new_token(), now)
        if not isinstance(answer, Claimed):
            if self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "%s: resume refused (%s %s)", self._label(), answer.code, answer.reason
                )
            self._resume = None
            self._close_transport_only(answer.code, answer.reason, now)
            return
        session = answer.session
        self._adopt(session, now)
        stepper = session.stepper
        replay = stepper.replay
        assert replay is not None
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        if stepper.is_closed:  # ended while being taken over (overflowed)
            self._close_transport_only(stepper.close_code or 1006, stepper.close_reason, now)
            return
        missed = replay.replay_after(peer_received)
        if missed is None:
            self._stepper_events(
                stepper.close(CloseCode.RESUME_BUFFER_OVERFLOW, "cannot replay", now), now
            )
            self._close_transport_only(CloseCode.RESUME_BUFFER_OVERFLOW, "cannot replay", now)
            return
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(
                "%s: resumed %s at step %s (replaying %d)",
                self._label(),
                stepper.id,
                stepper.step,
                len(missed),
            )
        resume.unconfirmed = True
        self._write_control(
            control("resumed", token=session.token, received=replay.received, **self._heartbeat()),
            now,
        )
        for message in missed:
            self._send_message(message, now)
        self._stepper_events(stepper.attach(now), now)

    def _resume_client(self, session: ResumeSession, now: float) -> None:
        """Our resume was accepted at the HTTP level: hold the session, and wait for
        the server's "resumed" (or its refusal: a close frame)."""
        self._opened_transport(now)
        resume = self._resume
        assert resume is not None
        if not session.stepper.is_detached:  # it ended while we were connecting
            self._resume = None
            self._close_transport_only(CloseCode.NORMAL, "", now)
            return
        self._adopt(session, now)
        resume.resuming = True
        self._events.append(Opened(self.path, self.subprotocol, session.stepper.flow.name))

    def _resume_refused_by_server(self, session: ResumeSession, now: float) -> None:
        self._opened_transport(now)
        if not session.stepper.is_detached:  # it ended while we were connecting
            self._close_transport_only(CloseCode.NORMAL, "", now)
            return
        self._resume = WireResume()
        self._adopt(session, now)
        self._stepper_events(
            session.stepper.close(CloseCode.SESSION_GONE, "the server does not resume", now), now
        )
        self._close_transport_only(CloseCode.NORMAL, "", now)
