"""`Wire`: one websocket connection, either role, with its Stepper. No I/O."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wsproto import ConnectionType

from socker_core import (
    ConnectionClosedError,
    Flow,
    LocalProtocolError,
    Registry,
    ResumeSession,
    RoomRef,
)
from socker_core._codes import CloseCode
from socker_core._resume import SessionStore

from . import deflate
from .events import CloseResult, Phase, WireEvent
from .frames import OP_PING, control_frame
from .handshake import _upgrade_request
from .handshake_phase import _HandshakePhase
from .hooks import HandshakeHook, HttpHandler, _check_headers
from .kept_phase import SessionKeeper
from .observe import EventHook
from .options import _DEFAULT_OPTIONS, KEEPALIVE_TIMEOUT_REASON, Options
from .resume import RESUME_SUBPROTOCOL, WireResume, resume_offer

#: What a server answers past `max_connections` (and a driver that cannot start one more).
BUSY_STATUS = 503

#: `chunks_to_send` keeps a chunk at least this big as its own buffer (joining
#: it would copy it, and an allocation this size is past glibc's mmap threshold:
#: page faults on every message); smaller ones are joined with their neighbours.
JOIN_LIMIT = 16 * 1024


#: The most buffers a driver passes to one `sendmsg` (the kernel refuses more than
#: IOV_MAX, 1024 on Linux, with EMSGSIZE); the rest goes in the next call.
MAX_IOV = 512


def unsent_part(
    chunks: list[bytes | bytearray | memoryview], sent: int
) -> list[bytes | bytearray | memoryview]:
    """What a vectored write of `chunks` that took `sent` bytes left (empty when
    it took everything); the first buffer left is a view, not a copy."""
    for index, chunk in enumerate(chunks):
        size = len(chunk)
        if sent < size:
            rest = chunks[index:]
            if sent:
                rest[0] = memoryview(chunk)[sent:]
            return rest
        sent -= size
    return []


class Wire(_HandshakePhase):
    """One websocket connection, either role, with its Stepper. No I/O.

    Use `Wire.server(...)` or `Wire.client(...)`. The driver loop:

    1. write `data_to_send()` to the socket whenever it is non-empty;
    2. read from the socket while `wants_data`, passing what arrives to
       `receive_data(data, now)` (and `None` at end of stream);
    3. handle `events()`: await `Await.awaitable` and call `resume`/`resume_error`,
       cancel on `CancelAwait`, await `AwaitHandshake` and call `finish_handshake`;
    4. call `tick(now)` at `next_deadline`; call `collect()` when `wakeup` fires
       (an async handler or application code sent something);
    5. while `input_pending`, call `receive_pending(now)` once per turn of the
       driver's loop, letting other connections run in between (fairness: one call
       handles at most `Options.frames_per_turn` frames);
    6. close the socket once `should_close_transport` is true (after writing the
       last `data_to_send()`), lingering first when `linger` says so; the
       connection is then `finished`.

    `receive_data`, `tick` and `events` never raise because of what the peer sent.

    Slotted and lean: an idle open connection holds its Stepper, a frame-level
    frame reader and a few scalars; handshake-only state is dropped on open.
    """

    __slots__ = ()

    # -- constructors ----------------------------------------------------------

    @classmethod
    def server(
        cls,
        routes: Flow | Mapping[str, Flow],
        now: float,
        options: Options | None = None,
        *,
        handshake_hook: HandshakeHook | None = None,
        http_handler: HttpHandler | None = None,
        peer: str = "",
        remote_address: tuple[str, int] | None = None,
        registry: Registry | None = None,
        owner: Any = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        sessions: SessionStore | None = None,
        keeper: SessionKeeper | None = None,
    ) -> Wire:
        """A server connection: one Flow for every path, or a path -> Flow map (404
        for other paths). The handshake hook may accept (choosing a flow, a
        subprotocol, `conn.state`), reject with a status, or be `async def`.
        `remote_address` reaches the hook and `conn.remote_address`; the open
        connection joins `registry` (rooms), and `conn.server` is `owner`.
        `on_event` receives the connection's `wire.observe` events; `logger` is
        where it logs (default: the "socker" logger).
        `sessions`: the server's session store; with it, routes whose flow has
        `resume_window` accept resuming clients (one store per server).
        `keeper`: with an engine, where sessions are kept for every worker
        (cross-worker resume, see kept_phase.py); the local store is then unused."""
        if isinstance(routes, Flow):
            routes.validate()
        else:
            if not routes:
                raise LocalProtocolError("routes must map at least one path to a Flow")
            for path, routed in routes.items():
                if not path.startswith("/"):
                    raise LocalProtocolError(f"route {path!r} must start with '/'")
                routed.validate()
        return cls(
            ConnectionType.SERVER,
            options or _DEFAULT_OPTIONS,
            now,
            routes=routes,
            handshake_hook=handshake_hook,
            http_handler=http_handler,
            peer=peer,
            remote_address=remote_address,
            registry=registry,
            owner=owner,
            on_event=on_event,
            logger=logger,
            sessions=sessions,
            keeper=keeper,
        )

    @classmethod
    def client(
        cls,
        flow: Flow,
        host: str,
        now: float,
        options: Options | None = None,
        *,
        path: str = "/",
        origin: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        peer: str = "",
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        reconnect: bool = False,
        resume_from: Wire | None = None,
    ) -> Wire:
        """A client connection; its opening request is already in `data_to_send()`.
        `host` is the Host header ("example.com:8000").

        `reconnect`: offer resume (`socker.resume.v1`). `resume_from`: the previous
        wire of a detached session: this connection resumes it (same flow)."""
        flow.validate()
        opts = options or _DEFAULT_OPTIONS
        _check_headers(headers, "Wire.client")
        if origin is not None:
            _check_headers([("Origin", origin)], "Wire.client")
        wire = cls(
            ConnectionType.CLIENT, opts, now, flow=flow, peer=peer, on_event=on_event, logger=logger
        )
        wire.path = path.partition("?")[0]  # like the server's: the query is not part of it
        offered = tuple(opts.subprotocols)
        if reconnect or resume_from is not None:
            resume = wire._resume = WireResume(reconnect=True)
            offered += (RESUME_SUBPROTOCOL,)
            previous = resume_from.resumable_session if resume_from is not None else None
            if previous is not None:
                if previous.stepper.flow is not flow:
                    raise LocalProtocolError("resume_from holds a session of another flow")
                replay = previous.stepper.replay
                assert replay is not None
                resume.resume_from = previous
                offered += (resume_offer(previous.token, replay.received),)
            resume.offered = offered
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if origin is not None:
            extra.append((b"Origin", origin.encode("latin-1")))
        if opts.compression == "deflate":
            offer = deflate.client_offer(
                server_no_context_takeover=opts.server_no_context_takeover,
                client_no_context_takeover=opts.client_no_context_takeover,
            )
            extra.append((b"Sec-WebSocket-Extensions", offer.encode("ascii")))
        nonce = base64.b64encode(os.urandom(16))
        try:
            data = _upgrade_request(host, path, nonce, offered, extra)
        except Exception as exc:  # idna or the h11 rules refusing the host, path or a header
            raise LocalProtocolError(f"cannot build the opening request: {exc}") from exc
        wire._nonce = nonce
        wire._client_request = (host, path, extra)
        wire._write(data, now)
        return wire

    # -- state -----------------------------------------------------------------

    @property
    def wakeup(self) -> Callable[[], None] | None:
        """Called with no arguments when there is output or an event to handle that did
        not come from a call into the wire (for example a send by an async handler or
        from application code): the driver should call `collect()`."""
        return self._wakeup

    @wakeup.setter
    def wakeup(self, callback: Callable[[], None] | None) -> None:
        self._wakeup = callback
        if self.stepper is not None:
            self.stepper.wakeup = callback  # the flow's outbox wakes the driver directly

    @property
    def phase(self) -> Phase:
        """The connection's phase (`Phase`): handshake, hook, open, closing, closed."""
        return self._phase

    @property
    def resumable_session(self) -> ResumeSession | None:
        """The resumable session this wire holds (None on plain connections, before
        the server named one, and once it resumed elsewhere)."""
        resume = self._resume
        if resume is None or resume.handed_off or resume.session is None:
            return None
        if not resume.session.token or resume.session.stepper.is_closed:
            return None
        return resume.session

    @property
    def handed_off(self) -> bool:
        """True once this wire's session resumed on another wire: awaited results
        still go through `resume` (they reach the new wire), nothing else does."""
        return self._resume is not None and self._resume.handed_off

    @property
    def detached(self) -> bool:
        """True while the transport is gone and this wire keeps a detached session:
        the driver keeps calling `tick` at `next_deadline` (and `collect` on a
        wakeup) until `finished`."""
        return self._phase is Phase.DETACHED and not self.finished

    @property
    def is_open(self) -> bool:
        """True once the opening handshake succeeded and until closing starts."""
        return self._phase is Phase.OPEN

    @property
    def wants_data(self) -> bool:
        """False while the driver should not read: backpressure (the flow's queue is
        full, messages are held for it, or more than `write_limit` bytes wait in
        `data_to_send`), a pending handshake hook, or nothing more to read."""
        if self._eof or self._transport_done or self._phase is Phase.HOOK:
            return False
        if self._out_size >= self.options.write_limit or self._held or self._input_pending:
            return False
        return self.stepper is None or self.stepper.accepting

    @property
    def input_pending(self) -> bool:
        """True when input already received waits for `receive_pending` (the last
        call stopped at `Options.frames_per_turn`) and the flow can take it now
        (not while backpressure holds: then `wants_data` and this stay False until
        the handler finishes or the output is taken)."""
        if not self._input_pending or self._transport_done:
            return False
        if self._out_size >= self.options.write_limit or self._held:
            return False
        return self.stepper is None or self.stepper.accepting

    @property
    def linger(self) -> tuple[float, int] | None:
        """Once `should_close_transport`: (seconds, bytes) for a lingering close (shut
        down the write side, read and discard until the peer's EOF, at most that
        long and that much, then close), or None to close at once: no
        `linger_timeout`, the peer already sent EOF, the transport failed, the peer
        stopped reading (4503) or the close handshake timed out.

        After failing the connection because the peer broke the protocol (1002,
        or 1007 for a close reason that is not UTF-8) the bound is `close_timeout`
        (`linger_timeout` when that is None), whatever `linger_timeout` says: the
        close handshake is still running, only its frames can no longer be parsed,
        and the peer's EOF, its answer to our close frame and our FIN, ends it."""
        if not self._transport_done or self._eof or not self._lingers:
            return None
        options = self.options
        seconds = options.linger_timeout
        if self._failed_by_peer and options.close_timeout is not None:
            seconds = options.close_timeout
        if seconds is None:
            return None
        return seconds, options.linger_bytes

    @property
    def should_close_transport(self) -> bool:
        """True once the socket should be closed (after a final write of `data_to_send`)."""
        return self._transport_done

    @property
    def finished(self) -> bool:
        """True once the transport is done and, if a flow ran, it is closed (or
        resumed on another wire)."""
        if not self._transport_done:
            return False
        if self.stepper is None or self.stepper.is_closed:
            return True
        resume = self._resume
        return resume is not None and resume.handed_off

    @property
    def next_deadline(self) -> float | None:
        """When `tick` next has something to do, or None."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                return self.stepper.next_deadline
            return None
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            return self._handshake_deadline
        best = self._close_deadline
        for candidate in (
            self._ping_due,
            self._pong_deadline,
            self.stepper.next_deadline if self.stepper is not None else None,
        ):
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        return best

    @property
    def result(self) -> CloseResult:
        """How the connection ended so far, as a `CloseResult`."""
        return CloseResult(self.close_code, self.close_reason, self.handshake_status)

    @property
    def buffered_amount(self) -> int:
        """Bytes waiting in `data_to_send()`."""
        return self._out_size

    # -- driver calls ----------------------------------------------------------

    def data_to_send(self) -> bytes | bytearray:
        """Everything to write now (b"" when nothing is pending). One chunk is
        returned as is; several are joined once."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self._out_size = 0
        return out[0] if len(out) == 1 else b"".join(out)

    def chunks_to_send(self) -> list[bytes | bytearray | memoryview]:
        """`data_to_send`, without the join: the pending chunks for a vectored write
        (`sendmsg`, `writelines`), each big payload as it is (never copied: a 1 MiB
        echo is written straight from the handler's bytes) and each run of small
        chunks between them joined once, so many small messages stay one buffer
        and a list holds at most about one entry per big payload. Empty when
        nothing is pending."""
        out = self._out
        if not out:
            return []
        self._out = []
        self._out_size = 0
        if len(out) == 1:
            return [out[0]]
        chunks: list[bytes | bytearray | memoryview] = []
        run: list[bytes | bytearray] = []
        for chunk in out:
            if len(chunk) >= JOIN_LIMIT:
                if run:
                    chunks.append(run[0] if len(run) == 1 else b"".join(run))
                    run = []
                chunks.append(chunk)
            else:
                run.append(chunk)
        if run:
            chunks.append(run[0] if len(run) == 1 else b"".join(run))
        return chunks

    def events(self) -> list[WireEvent]:
        """Take the events produced since the last call."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    def receive_pending(self, now: float) -> None:
        """Handle the next `frames_per_turn` frames of input already received (see
        `input_pending`); a no-op when there is none. Never raises because of what
        the peer sent."""
        if not self._input_pending:
            return
        if self._transport_done or self._reader is None:
            self._input_pending = False
            self._backlog = None
            return
        self._next_turn(now)

    def refuse_busy(self, now: float, reason: str = "server at max_connections") -> None:
        """A server connection refused before reading anything: 503 at once (with
        Retry-After), one warning log line, and the connection ends. The driver
        calls it past `max_connections` (or when it cannot serve one more)."""
        if self._client or self._phase is not Phase.HANDSHAKE or self._transport_done:
            raise LocalProtocolError("refuse_busy is for a server connection not yet started")
        self.log.warning("%s: refused (%d): %s", self._label(), BUSY_STATUS, reason)
        self._fail_handshake(
            BUSY_STATUS, reason, now, respond=True, headers=[("Retry-After", "1")], log=False
        )

    def receive_data(self, data: bytes | bytearray | memoryview | None, now: float) -> None:
        """Bytes from the socket; `None` (or b"") means end of stream. Never raises
        because of what the peer sent.

        `data` may be a view of the driver's read buffer, reused for the next read:
        the wire copies what it keeps (an incomplete frame header, the payload into
        its message), so a read costs no copy of its own."""
        if self._transport_done:
            return
        if not data:
            self._receive_eof(now)
            return
        phase = self._phase
        if phase is Phase.HANDSHAKE or phase is Phase.HOOK:
            self._receive_handshake(bytes(data) if type(data) is memoryview else data, now)
            return
        if phase is Phase.DRAINING:
            return  # the close handshake is over: only EOF matters now
        reader = self._reader
        assert reader is not None  # open or closing
        events = reader.feed(data)
        if events or self._backlog:
            self._pump(events, now)

    def tick(self, now: float) -> None:
        """Handle every deadline at or before `now`."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                self._stepper_events(self.stepper.tick(now), now)
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._fail_handshake(
                    0 if self._client else 408, "opening handshake timed out", now, respond=True
                )
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            if self.log.isEnabledFor(logging.INFO):
                self.log.info("%s: close handshake timed out", self._label())
            self._lingers = False  # nothing was just written: nothing to protect
            self._finish_transport(now, CloseCode.ABNORMAL, "close handshake timed out")
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            if self.log.isEnabledFor(logging.INFO):
                self.log.info("%s: %s", self._label(), KEEPALIVE_TIMEOUT_REASON)
            if self._resume is not None and self._resume.session is not None:
                # A silent drop: the session waits for a resume (no close frame,
                # which a live but slow peer would take as the end).
                self._finish_transport(now, CloseCode.ABNORMAL, KEEPALIVE_TIMEOUT_REASON)
                return
            self._fail(now, CloseCode.INTERNAL_ERROR, KEEPALIVE_TIMEOUT_REASON, by_peer=False)
            return
        if self._ping_due is not None and now >= self._ping_due and self._phase is Phase.OPEN:
            self._ping_payload = os.urandom(4)
            if self._resume is not None:
                self._keepalive_ack(now)
            self._write(control_frame(OP_PING, self._ping_payload, self._client), now)
            self._ping_due = None
            timeout = self.options.ping_timeout
            self._pong_deadline = None if timeout is None else now + timeout
        if self.stepper is not None:
            self._stepper_events(self.stepper.tick(now), now)

    def resume(self, token: int, result: object, now: float) -> None:
        """An `Await`'s awaitable returned `result`."""
        if self.stepper is None:
            raise LocalProtocolError("resume before the flow started")
        if self._resume is not None and self._resume.handed_off:
            # The session moved to another wire: its events go there (outbox),
            # under its driver's guard (a threaded driver's lock) if it has one.
            stepper = self.stepper
            with stepper.guard or contextlib.nullcontext():
                stepper.post(stepper.resume(token, result, now))
            return
        if self.observer is not None:
            self.observer.resumed()
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume(token, result, now), now)
        self._feed_held(now)

    def resume_error(self, token: int, error: BaseException, now: float) -> None:
        """An `Await`'s awaitable raised `error`."""
        if self.stepper is None:
            raise LocalProtocolError("resume_error before the flow started")
        if self._resume is not None and self._resume.handed_off:
            stepper = self.stepper
            with stepper.guard or contextlib.nullcontext():
                stepper.post(stepper.resume_error(token, error, now))
            return
        if self.observer is not None:
            self.observer.resumed()
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume_error(token, error, now), now)
        self._feed_held(now)

    def collect(self, now: float) -> None:
        """Take what the flow produced outside a call (async handlers, application sends)."""
        if self.stepper is not None and not (self._resume is not None and self._resume.handed_off):
            self._stepper_events(self.stepper.pending_events(), now)

    def send(self, data: bytes, now: float) -> None:
        """Application send from outside any handler (ConnectionClosedError once closing).
        While detached the message is kept for replay."""
        if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
            self._stepper_events(self.stepper.send(data, now), now)
            return
        if self.stepper is None or self._phase is not Phase.OPEN:
            raise ConnectionClosedError(
                f"cannot send: the connection is {self._phase.value}",
                self.close_code,
                self.close_reason,
            )
        self._stepper_events(self.stepper.send(data, now), now)

    def send_frame(
        self, frame: bytes, data: bytes, now: float, origin: RoomRef | None = None
    ) -> bool:
        """Queue `frame`, the prebuilt server frame of message `data`
        (`frame_message(data)`): one broadcast builds it once and queues the same
        bytes on every recipient. Returns whether it was queued; never raises.

        Skipped (False) when the connection is not open, and subject to
        `max_send_buffer` like any send: past it the connection is dropped (4503)
        and this returns False. While the flow is in a call or has sends waiting
        in its outbox, the message goes through the flow instead, so it keeps its
        place after them; so does every message to a resumable session (detached
        or not), which keeps it for replay, and to a connection that negotiated
        compression (each one's frame differs). `origin`: the room publication
        `data` delivers (cluster rooms), for the session's outgoing ledger."""
        stepper = self.stepper
        if stepper is None or self._client:
            return False
        if self._phase is not Phase.OPEN and not self.detached:
            return False
        if not stepper.quiet or stepper.replay is not None or self._deflate is not None:
            # A resumable session keeps every message for replay (the prebuilt frame
            # would bypass that ledger); a detached one keeps it until it resumes.
            try:
                if origin is None:
                    stepper.conn.send(data)
                else:
                    stepper.deliver(data, origin)
            except ConnectionClosedError:
                return False
            return True
        self._out.append(frame)
        self._out_size += len(frame)
        if self.observer is not None:
            self.observer.sent(len(data))
        if self._out_size > self.options.max_send_buffer:
            self._overflow(now)
            return False
        return True

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> None:
        """Application close (a server shutting down uses 1001). Before the handshake
        completes a server answers 503 (1001) or 400 instead. A detached session
        ends at once (its on_close hooks run)."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                self._stepper_events(self.stepper.close(code, reason, now), now)
            return
        if self.stepper is None:
            status = 0 if self._client else 503 if code == CloseCode.GOING_AWAY else 400
            self._fail_handshake(status, reason or "closed before the handshake", now, respond=True)
            return
        self._stepper_events(self.stepper.close(code, reason, now), now)

    def finish_handshake(self, result: object, now: float) -> None:
        """The awaited handshake hook returned `result` (or raised: pass the exception).
        A no-op when the connection already ended (timeout, `close`, `abort`)."""
        if self._transport_done:
            return
        if self._phase is not Phase.HOOK:
            raise LocalProtocolError(f"no handshake hook is pending ({self._phase.value})")
        self._phase = Phase.HANDSHAKE
        self._decide(result, now)

    def abort(
        self, now: float, reason: str = "transport lost", *, keep_session: bool = True
    ) -> None:
        """The transport failed under us (reset, write error): end everything now
        (a resumable session detaches, unless `keep_session` is False: a driver
        shutting down or cancelled)."""
        if self._transport_done:
            if not keep_session and self.detached and self.stepper is not None:
                self._stepper_events(self.stepper.transport_closed(1006, reason, now), now)
            return
        self._lingers = False
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            self._fail_handshake(0, reason, now, respond=False)
        else:
            if not keep_session:
                resume = self._resume
                if resume is not None and not resume.handed_off:
                    resume.session = None  # a lost transport now ends the flow
            self._finish_transport(now, CloseCode.ABNORMAL, reason)
