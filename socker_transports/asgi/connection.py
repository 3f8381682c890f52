"""One websocket connection of an ASGI `App`: the ASGI channel around a Stepper."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from socker_core import (
    ON_CLOSE,
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    Connection,
    Event,
    HandlerFailed,
    Send,
    State,
    Stepper,
)
from socker_core._codes import CLOSE_CODES, CloseCode

from .._blocking import run_blocking_in_thread
from ..wire import HandshakeRequest
from ..wire.observe import Observer
from ..wire.policy import CloseDecision, oversize, text_message

if TYPE_CHECKING:
    from .app import App

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
SendFn = Callable[[Message], Awaitable[None]]

_FALLBACK_LINGER = 10.0


def _request_from_scope(scope: Scope, method: str = "GET") -> HandshakeRequest:
    """The HandshakeRequest a native server would build, from an ASGI scope. The
    path is relative to the mount point (`root_path`), as routes are written."""
    path: str = scope.get("path", "/") or "/"
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    if not path.startswith("/"):
        path = "/" + path
    headers = tuple(
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers", ())
    )
    origin = next((value for name, value in headers if name == "origin"), None)
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    subprotocols = tuple(scope.get("subprotocols", ()))
    client = scope.get("client")
    remote = (str(client[0]), int(client[1])) if client else None
    return HandshakeRequest(path, query, headers, subprotocols, origin, method, remote)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _encode_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class AsgiConnection:
    """One live websocket connection of an `App`: its Stepper and the ASGI channel.

    Everything runs on the event loop of the ASGI server (one thread): events are
    applied synchronously, outgoing ASGI messages wait in order in `_out` for the
    writer task, which alone calls `send`."""

    def __init__(
        self,
        app: App,
        stepper: Stepper,
        request: HandshakeRequest,
        receive: Receive,
        send: SendFn,
        request_scope: Scope,
    ) -> None:
        self.app = app
        self.stepper = stepper
        self.request = request
        self._receive = receive
        self._send = send
        self._out: deque[Message] = deque()
        self._out_wake = anyio.Event()
        self._timer_wake = anyio.Event()
        self._read_wake = anyio.Event()
        self._pending: dict[int, anyio.CancelScope] = {}
        self._unstarted: dict[int, Awaitable[Any]] = {}
        self._tg: Any = None
        self._close_deadline = math.inf
        self._read_scope: anyio.CancelScope | None = None
        self.subprotocol: str | None = None
        self._writer_scope = anyio.CancelScope()
        self._disconnected = False  # the ASGI server said websocket.disconnect
        self._send_failed = False
        #: Bytes of messages queued for the writer and not yet handed to `send`:
        #: past `max_send_buffer` the peer stopped reading and is dropped (4503).
        self._out_bytes = 0
        self._overflowed = False
        self._clock = _backend_clock()
        opts = app.options
        self.log = app.log
        self.peer = _peer(request_scope)
        self.observer = (
            None if app.on_event is None else Observer(app.on_event, "server", log=self.log)
        )
        self._linger = _FALLBACK_LINGER if opts.close_timeout is None else opts.close_timeout
        stepper.wakeup = self._collect
        stepper.run_blocking = run_blocking_in_thread  # blocking=True steps: a worker thread

    @property
    def id(self) -> str:
        """The connection's id (the same as `conn.id`)."""
        return self.stepper.id

    @property
    def conn(self) -> Connection:
        """The `Connection` the flow's handlers receive."""
        return self.stepper.conn

    def send(self, data: bytes) -> None:
        """Application send from a task on the server's loop (not from a handler)."""
        self._apply(self.stepper.send(data, self._clock()))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing (a no-op once closing)."""
        self._apply(self.stepper.close(code, reason, self._clock()))

    # -- running -----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends: reader, writer and timers run in one
        task group; returns when the transport is gone and the on_close hooks ran."""
        stepper = self.stepper
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.observer is not None:
                    self.observer.opened(stepper, self.request.path, self.subprotocol, self.peer)
                self._apply(stepper.open(self._clock()))
                tg.start_soon(self._writer, self._writer_scope)
                tg.start_soon(self._timer)
                try:
                    await self._reader()
                finally:
                    if not stepper.is_closed:
                        self._apply(
                            stepper.transport_closed(
                                CloseCode.ABNORMAL, "connection lost", self._clock()
                            )
                        )
                    self._disconnected = True
                    self._writer_scope.cancel()  # nothing more can be sent
                    self._wake_all()
                    # Only on_close hooks (bounded) may still run.
                    for scope in self._pending.values():
                        scope.cancel()
        finally:
            for awaitable in self._unstarted.values():
                _discard(awaitable)
            self._unstarted.clear()

    async def _reader(self) -> None:
        stepper = self.stepper
        while True:
            while not stepper.accepting and not self._disconnected:
                self._read_wake = anyio.Event()
                await self._read_wake.wait()
            if self._overflowed:
                return  # dropped (4503): the Stepper is closed already
            message: Message | None = None
            with anyio.CancelScope(deadline=self._close_deadline) as scope:
                self._read_scope = scope
                message = await self._receive()
            self._read_scope = None
            now = self._clock()
            if message is None:
                # Our close went out but the ASGI server never reported the end, or
                # the peer stopped reading (dropped): give up (the server drops the
                # transport when we return).
                if not stepper.is_closed:
                    self._apply(stepper.transport_closed(CloseCode.ABNORMAL, "close timeout", now))
                return
            kind = message.get("type")
            if kind == "websocket.receive":
                if stepper.phase is not State.OPEN and stepper.phase is not State.AWAITING:
                    continue  # after our close: discarded, per RFC 6455
                data = message.get("bytes")
                decided: bytes | str | CloseDecision
                if data is None:
                    decided = text_message(self.app.options, message.get("text") or "")
                else:
                    decided = data
                if isinstance(decided, str):
                    decided = oversize(self.app.options, len(decided.encode())) or decided
                elif not isinstance(decided, CloseDecision):
                    decided = oversize(self.app.options, len(decided)) or decided
                if isinstance(decided, CloseDecision):
                    self._apply(stepper.close(decided.code, decided.reason, now))
                else:
                    if self.observer is not None:
                        self.observer.received(len(decided))
                    self._apply(stepper.receive(decided, now))
            elif kind == "websocket.disconnect":
                code = int(message.get("code") or CloseCode.NO_STATUS_RECEIVED)
                reason = message.get("reason") or ""
                self._disconnected = True
                self._apply(stepper.transport_closed(code, reason, now))
                return

    async def _writer(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._write_all()

    async def _write_all(self) -> None:
        while True:
            while not self._out:
                if self._disconnected:
                    return
                self._out_wake = anyio.Event()
                await self._out_wake.wait()
            message = self._out.popleft()
            if message.get("type") == "websocket.send":
                self._out_bytes -= _size(message)
            if self._disconnected or self._send_failed:
                continue
            try:
                await self._send(message)
            except Exception as exc:  # the transport went away under the send
                self.log.debug("asgi %s: send failed: %r", self.id, exc)
                self._send_failed = True
                self._out.clear()

    async def _timer(self) -> None:
        """Sleeps until `next_deadline` (woken whenever it may have moved), then ticks."""
        stepper = self.stepper
        while not self._disconnected:
            deadline = stepper.next_deadline
            wake = self._timer_wake = anyio.Event()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                await wake.wait()
            if scope.cancelled_caught and not self._disconnected:
                self._apply(stepper.tick(self._clock()))

    # -- events ------------------------------------------------------------------

    def _collect(self) -> None:
        """The Stepper's wakeup: events made outside a call (an async handler or
        application code sent or closed)."""
        self._apply(self.stepper.pending_events())

    def _wake_all(self) -> None:
        self._out_wake.set()
        self._timer_wake.set()
        self._read_wake.set()

    def _apply(self, events: list[Event]) -> None:
        observer = self.observer
        if observer is not None:
            observer.stepper_events(events)
        for event in events:
            kind = type(event)
            if kind is Send:
                assert isinstance(event, Send)
                if observer is not None:
                    observer.sent(len(event.data))
                payload = "text" if isinstance(event.data, str) else "bytes"
                self._out.append({"type": "websocket.send", payload: event.data})
                self._out_wake.set()
                self._out_bytes += len(event.data)
                if self._out_bytes > self.app.options.max_send_buffer:
                    self._overflowed = True
            elif kind is CloseRequested:
                assert isinstance(event, CloseRequested)
                self._out.append(
                    {"type": "websocket.close", "code": event.code, "reason": event.reason}
                )
                self._close_deadline = self._clock() + self._linger
                if self._read_scope is not None:
                    self._read_scope.deadline = self._close_deadline
                self._out_wake.set()
            elif kind is Await:
                assert isinstance(event, Await)
                self._start_await(event)
            elif kind is CancelAwait:
                assert isinstance(event, CancelAwait)
                scope = self._pending.pop(event.token, None)
                if scope is not None:
                    scope.cancel()
                awaitable = self._unstarted.pop(event.token, None)
                if awaitable is not None:
                    _discard(awaitable)
            elif kind is HandlerFailed:
                assert isinstance(event, HandlerFailed)
                self.log.error("asgi %s: %s raised", self.id, event.step, exc_info=event.exception)
            elif kind is Closed:
                assert isinstance(event, Closed)
                if self.log.isEnabledFor(logging.INFO):
                    self.log.info("asgi %s: closed %s %s", self.id, event.code, event.reason)
                self.app._forget(self)
        if self._overflowed and not self._send_failed:
            self._drop()
        # The deadline may have moved, and the reader may read again.
        self._timer_wake.set()
        if self.stepper.accepting:
            self._read_wake.set()

    def _drop(self) -> None:
        """The peer stopped reading: what is queued is dropped and the connection
        ends with 4503, as `max_send_buffer` does on the native servers (the ASGI
        server closes the transport when the App returns)."""
        self._send_failed = True
        self._out.clear()
        self._out_bytes = 0
        self.log.warning(
            "asgi %s: dropped, the peer stopped reading (over %d bytes queued)",
            self.id,
            self.app.options.max_send_buffer,
        )
        if not self.stepper.is_closed:
            self._apply(
                self.stepper.transport_closed(
                    CloseCode.SEND_BUFFER_OVERFLOW,
                    CLOSE_CODES[CloseCode.SEND_BUFFER_OVERFLOW],
                    self._clock(),
                )
            )
        self._disconnected = True
        if self._read_scope is not None:
            self._read_scope.cancel()
        self._wake_all()

    def _start_await(self, event: Await) -> None:
        tg = self._tg
        if event.step == ON_CLOSE:
            if tg is None:
                _discard(event.awaitable)
                return
            tg.start_soon(self._run_close_hook, event.awaitable)
            return
        self._unstarted[event.token] = event.awaitable
        tg.start_soon(self._run_await, event.token)

    async def _run_await(self, token: int) -> None:
        awaitable = self._unstarted.pop(token, None)
        if awaitable is None:
            return  # cancelled before it started
        result: object = None
        error: Exception | None = None
        with anyio.CancelScope() as scope:
            self._pending[token] = scope
            try:
                result = await awaitable
            except Exception as exc:
                error = exc
        if self._pending.pop(token, None) is None or scope.cancelled_caught:
            return  # cancelled: the Stepper no longer waits for it
        now = self._clock()
        if self.observer is not None:
            self.observer.resumed()
        self._collect()  # what the handler sent goes out before what follows it
        if error is not None:
            self._apply(self.stepper.resume_error(token, error, now))
        else:
            self._apply(self.stepper.resume(token, result, now))

    async def _run_close_hook(self, awaitable: Awaitable[Any]) -> None:
        try:
            with anyio.move_on_after(self._linger) as scope:
                await awaitable
            if scope.cancelled_caught:
                self.log.warning(
                    "asgi %s: on_close hook cancelled after %ss", self.id, self._linger
                )
        except Exception:
            self.log.exception("asgi %s: on_close hook raised", self.id)


def _backend_clock() -> Callable[[], float]:
    """anyio's clock as a function that also works outside a task (an asyncio loop
    callback, such as `App.close` scheduled with `loop.call_soon_threadsafe`)."""
    if sniffio.current_async_library() == "asyncio":
        return asyncio.get_running_loop().time  # what anyio's asyncio backend reads
    return anyio.current_time


def _size(message: Message) -> int:
    data = message.get("bytes")
    if data is None:
        data = message.get("text") or ""
    return len(data)


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()
