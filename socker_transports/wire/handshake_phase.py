"""The handshake phase of a connection: the HTTP head in, the flow started."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import RejectConnection, Request

from socker_core import Flow, Stepper

from . import deflate
from .events import AwaitHandshake, Opened, Phase
from .handshake import _accept_response, _check_accept_response, _read_request, _valid_key
from .hooks import _DEFAULT_ACCEPT, Accept, HandshakeRequest, Reject
from .http1 import _STATUS_LINE_101, _h11_fields, _h11_head, _http_response, _Refused
from .open_phase import _OpenPhase
from .reader import FrameReader

logger = logging.getLogger("socker")


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
        request = HandshakeRequest(path, query, tuple(headers), offered, origin)
        self._request = request
        self.path = path
        is_upgrade = upgrade is not None and "websocket" in upgrade.lower()
        if not is_upgrade and self.http_handler is not None and parts[0] == "GET":
            try:
                response = self.http_handler(request)
            except Exception as exc:
                logger.error("%s: http_handler raised", self._label(), exc_info=exc)
                self._fail_handshake(500, "http_handler raised", now, respond=True)
                return
            if response is not None:
                self._write(
                    _http_response(
                        response.status, response.body, [("Content-Type", response.content_type)]
                    ),
                    now,
                )
                self._fail_handshake(response.status, "plain HTTP request served", now)
                return
        if isinstance(verdict, _Refused):
            self._fail_handshake(
                verdict.status, verdict.reason, now, respond=True, headers=verdict.headers
            )
            return
        if len(keys) != 1 or not _valid_key(keys[0]):
            self._fail_handshake(400, "invalid Sec-WebSocket-Key", now, respond=True)
            return
        origins = self.options.origins
        if origins is not None and origin not in origins:
            self._fail_handshake(403, f"origin {origin!r} not allowed", now, respond=True)
            return
        if self._route(path) is None:
            self._fail_handshake(404, f"no flow at path {path!r}", now, respond=True)
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

    def _route(self, path: str) -> Flow | None:
        routes = self.routes
        if isinstance(routes, Flow):
            return routes
        assert routes is not None
        return routes.get(path)

    def _decide(self, result: object, now: float) -> None:
        if isinstance(result, BaseException):
            logger.error("%s: handshake hook raised", self._label(), exc_info=result)
            self._fail_handshake(500, "handshake hook raised", now, respond=True)
            return
        if isinstance(result, Reject):
            self._fail_handshake(
                result.status,
                "rejected by the handshake hook",
                now,
                respond=True,
                body=result.body,
                headers=result.headers,
            )
            return
        if result is not None and not isinstance(result, Accept):
            logger.error("%s: handshake hook returned %r", self._label(), result)
            self._fail_handshake(
                500, "handshake hook returned an invalid answer", now, respond=True
            )
            return
        accept = result if isinstance(result, Accept) else _DEFAULT_ACCEPT
        request = self._request
        assert request is not None
        flow = accept.flow or self._route(self.path)
        assert flow is not None
        subprotocol = accept.subprotocol
        if subprotocol is None:
            subprotocol = next(
                (p for p in self.options.subprotocols if p in request.subprotocols), None
            )
        if subprotocol is not None and subprotocol not in request.subprotocols:
            logger.error("%s: subprotocol %r was not offered", self._label(), subprotocol)
            self._fail_handshake(
                500, f"subprotocol {subprotocol!r} was not offered", now, respond=True
            )
            return
        headers = accept.headers
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
            logger.error("%s: cannot accept: %s", self._label(), exc)
            self._fail_handshake(500, "cannot build the handshake response", now, respond=True)
            return
        self._write(response, now)
        self.subprotocol = subprotocol
        rest = self._pending_after_head
        self._start_flow(flow, now, accept.state)
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
            subprotocol = _check_accept_response(
                fields, self._nonce, options.subprotocols, extensions if offered else None
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
                text=options.accept_text,
                deflate=self._deflate,
            )
        return reader

    def _start_flow(self, flow: Flow, now: float, state: Mapping[str, Any]) -> None:
        self._phase = Phase.OPEN
        self.handshake_status = 101
        self._handshake_deadline = None
        self._drop_handshake_state()
        self._open_reader()
        stepper = Stepper(flow, max_queue=self.options.max_queue)
        if state:
            conn_state = stepper.conn.state
            for key, value in state.items():
                setattr(conn_state, key, value)
        stepper.wakeup = self._wakeup
        self.stepper = stepper
        if self.options.ping_interval is not None:
            self._ping_due = now + self.options.ping_interval
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: open %s (flow %s)", self._label(), self.path, flow.name)
        self._stepper_events(stepper.open(now), now)
