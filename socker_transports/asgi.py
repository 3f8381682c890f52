"""socker_transports.asgi: serve socker flows from any ASGI server.

`App(routes, **options)` is an ASGI application: websocket scopes run a Flow (or
the Flow a path -> Flow mapping names), HTTP scopes get `http_handler`'s answer or
404, and lifespan scopes are acknowledged (shutdown closes live connections with
1001). Mount it in FastAPI or Starlette, or serve it alone:

    app = FastAPI()
    app.mount("/game", App(game_flow))          # ws://host/game/ (and below)
    # or: app.add_websocket_route("/game", App(game_flow))   # ws://host/game exactly

    uvicorn mymodule:app

Semantics are the native drivers' wherever the ASGI server lets socker own them:
the connection is driven by the same `socker_core.Stepper` (steps, on_open
speaking first, per-step timeouts through `tick`/`next_deadline`, async handlers
with the bounded queue: `receive` is not called while `Stepper.accepting` is
False, so the ASGI server's own buffer and flow control hold the rest), on_close
exactly once, and the same close codes, decided by the same functions as the
wire (`socker_transports._policy`: routing, origins, the handshake hook's answer,
text -> 1003, max_size -> 1009).

The ASGI server owns the transport: the HTTP handshake and its limits, frame
parsing and frame size, ping/pong keepalive, permessage-deflate, the close
handshake's timing and TLS. Options that only make sense for socker's own
transport (`ping_interval`, `ping_timeout`, `max_line`, `max_headers`,
`write_limit`, `max_send_buffer`) are refused here with a pointer to the server
setting (see the README's ASGI section for the uvicorn and hypercorn names).

The App owns a registry of its live connections (`App.connections`, id ->
`AsgiConnection`): the seam for rooms and broadcast.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

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
    Flow,
    HandlerFailed,
    LocalProtocolError,
    Send,
    State,
    Stepper,
)
from socker_core._codes import CloseCode

from ._blocking import run_blocking_in_thread
from .wire import (
    SHUTDOWN_CODE,
    EventHook,
    HandshakeHook,
    HandshakeRequest,
    HttpHandler,
    HttpResponse,
    Options,
    check_shutdown,
    shutdown_reason,
)
from .wire.observe import Observer
from .wire.policy import (
    Accepted,
    CloseDecision,
    Refused,
    check_request,
    handshake_verdict,
    oversize,
    text_message,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
SendFn = Callable[[Message], Awaitable[None]]

#: Options the ASGI server owns, with where to set them instead.
SERVER_OWNED_OPTIONS: dict[str, str] = {
    "ping_interval": "uvicorn --ws-ping-interval; hypercorn websocket_ping_interval",
    "ping_timeout": "uvicorn --ws-ping-timeout; hypercorn has no pong timeout",
    "max_line": "uvicorn --h11-max-incomplete-event-size; hypercorn h11_max_incomplete_size",
    "max_headers": "the ASGI server's HTTP parser",
    "write_limit": "the ASGI server's write buffer",
    "max_send_buffer": "the ASGI server's write buffer",
}

#: Bound (seconds) for the close handshake and on_close hooks when close_timeout is None.
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
    return HandshakeRequest(path, query, headers, subprotocols, origin, method)


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
        return self.stepper.id

    @property
    def conn(self) -> Connection:
        return self.stepper.conn

    def send(self, data: bytes) -> None:
        """Application send from a task on the server's loop (not from a handler)."""
        self._apply(self.stepper.send(data, self._clock()))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing (a no-op once closing)."""
        self._apply(self.stepper.close(code, reason, self._clock()))

    # -- running -----------------------------------------------------------------

    async def run(self) -> None:
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
            message: Message | None = None
            with anyio.CancelScope(deadline=self._close_deadline) as scope:
                self._read_scope = scope
                message = await self._receive()
            self._read_scope = None
            now = self._clock()
            if message is None:
                # Our close went out but the ASGI server never reported the end:
                # give up (the server drops the transport when we return).
                self._apply(stepper.transport_closed(CloseCode.ABNORMAL, "close timeout", now))
                return
            kind = message.get("type")
            if kind == "websocket.receive":
                if stepper.phase is not State.OPEN and stepper.phase is not State.AWAITING:
                    continue  # after our close: discarded, per RFC 6455
                data = message.get("bytes")
                decided: bytes | CloseDecision
                if data is None:
                    decided = text_message(self.app.options, message.get("text") or "")
                else:
                    decided = data
                if not isinstance(decided, CloseDecision):
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
                self._out.append({"type": "websocket.send", "bytes": event.data})
                self._out_wake.set()
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
        # The deadline may have moved, and the reader may read again.
        self._timer_wake.set()
        if self.stepper.accepting:
            self._read_wake.set()

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


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


class App:
    """An ASGI application serving `routes` (one Flow for every path, or a
    path -> Flow mapping, paths relative to where the App is mounted).

    - `handshake_hook(request)`: as on the native servers (Accept / Reject, sync
      or async, bounded by `open_timeout`).
    - `http_handler(request)`: answers HTTP scopes (it sees `request.method`);
      None or no handler: 404.
    - `on_event(event)`: the `wire.observe` events, as on the native servers;
      `logger`: replaces the "socker" logger.
    - `**options`: the `Options` that apply under ASGI (`max_size`, `max_queue`,
      `open_timeout`, `close_timeout`, `origins`, `subprotocols`, `accept_text`);
      the others are the ASGI server's (LocalProtocolError names the setting).
    """

    def __init__(
        self,
        routes: Flow | Mapping[str, Flow],
        *,
        handshake_hook: HandshakeHook | None = None,
        http_handler: HttpHandler | None = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        **options: Any,
    ) -> None:
        for name in options:
            if name in SERVER_OWNED_OPTIONS:
                raise LocalProtocolError(
                    f"{name} is owned by the ASGI server under socker_transports.asgi: "
                    f"set it there ({SERVER_OWNED_OPTIONS[name]})"
                )
        if isinstance(routes, Flow):
            routes.validate()
        else:
            if not routes:
                raise LocalProtocolError("routes must map at least one path to a Flow")
            for path, routed in routes.items():
                if not path.startswith("/"):
                    raise LocalProtocolError(f"route {path!r} must start with '/'")
                routed.validate()
        self.routes = routes
        self.options = Options(**options)
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self.on_event = on_event
        #: Where the App and its connections log (`logger=`).
        self.log = logger if logger is not None else logging.getLogger("socker")
        #: Live connections, id -> AsgiConnection (the seam for rooms and broadcast).
        self.connections: dict[str, AsgiConnection] = {}
        self._closing = False
        self._close_code = int(SHUTDOWN_CODE)
        self._idle: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def close(self, code: int = SHUTDOWN_CODE, drain: bool = False) -> None:
        """Stop taking connections (new websocket handshakes get 503; the ASGI
        server keeps owning its listening socket) and close every live one with
        `code` (1001 "server shutting down", 1012 "service restart"). With
        `drain=True` live connections are left to finish; `shutdown` bounds that.
        Call it on the server's event loop."""
        check_shutdown(code, None)
        self._closing = True
        self._close_code = int(code)
        if drain:
            return
        reason = shutdown_reason(code)
        for connection in list(self.connections.values()):
            connection.close(code, reason)

    async def shutdown(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """`close(code, drain)`, then wait: for a drain at most `drain_timeout`
        seconds (None: no bound) before closing what is left with `code`, then at
        most `close_timeout` (+1 s) for the connections to end."""
        check_shutdown(code, drain_timeout)
        self.close(code, drain)
        if drain:
            with anyio.move_on_after(math.inf if drain_timeout is None else drain_timeout):
                await self._wait_idle()
            self.close(code)
        linger = self.options.close_timeout
        with anyio.move_on_after((_FALLBACK_LINGER if linger is None else linger) + 1.0):
            await self._wait_idle()

    async def _wait_idle(self) -> None:
        while self.connections:
            self._idle = idle = anyio.Event()
            await idle.wait()

    def _forget(self, connection: AsgiConnection) -> None:
        self.connections.pop(connection.id, None)
        if not self.connections and self._idle is not None:
            self._idle.set()

    # -- scopes ------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: SendFn) -> None:
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        request = _request_from_scope(scope, scope.get("method", "GET"))
        response: HttpResponse | None = None
        if self.http_handler is not None:
            try:
                response = self.http_handler(request)
            except Exception:
                self.log.exception("asgi: http_handler raised")
                response = HttpResponse(500, b"http_handler raised\n")
        if response is None:
            response = HttpResponse(404, b"not found\n")
        body = b"" if request.method == "HEAD" else response.body
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _encode_headers(response.all_headers()),
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        first = await receive()
        if first.get("type") != "websocket.connect":
            return
        request = _request_from_scope(scope)
        verdict = await self._handshake(request)
        if isinstance(verdict, Refused):
            await self._refuse(scope, send, verdict)
            return
        accept: Message = {"type": "websocket.accept", "subprotocol": verdict.subprotocol}
        if verdict.headers:
            accept["headers"] = _encode_headers(verdict.headers)
        await send(accept)
        stepper = Stepper(
            verdict.flow, max_queue=self.options.max_queue, id=secrets.token_urlsafe(9)
        )
        if verdict.state:
            conn_state = stepper.conn.state
            for key, value in verdict.state.items():
                setattr(conn_state, key, value)
        connection = AsgiConnection(self, stepper, request, receive, send, scope)
        connection.subprotocol = verdict.subprotocol
        self.connections[connection.id] = connection
        log = self.log
        if log.isEnabledFor(logging.INFO):
            log.info("asgi %s: open %s (flow %s)", connection.id, request.path, verdict.flow.name)
        try:
            await connection.run()
        finally:
            self._forget(connection)

    async def _handshake(self, request: HandshakeRequest) -> Accepted | Refused:
        if self._closing:
            return Refused(503, shutdown_reason(self._close_code))
        refused = check_request(self.options, self.routes, request)
        if refused is not None:
            return refused
        result: object = None
        if self.handshake_hook is not None:
            try:
                result = self.handshake_hook(request)
                if inspect.isawaitable(result):
                    timeout = self.options.open_timeout
                    with anyio.fail_after(math.inf if timeout is None else timeout):
                        result = await result
            except TimeoutError:
                return Refused(408, "handshake hook timed out")
            except Exception as exc:
                result = exc
        verdict = handshake_verdict(result, request, self.options, self.routes)
        if isinstance(verdict, Refused) and verdict.error is not None:
            if isinstance(verdict.error, BaseException):
                self.log.error("asgi: %s", verdict.reason, exc_info=verdict.error)
            else:
                self.log.error("asgi: %s", verdict.error)
        return verdict

    async def _refuse(self, scope: Scope, send: SendFn, verdict: Refused) -> None:
        """Refuse with the verdict's status where the server can send one (the
        `websocket.http.response` extension), else with the server's 403."""
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = verdict.body or f"{verdict.reason}\n".encode()
            headers = [("Content-Type", "text/plain; charset=utf-8"), *verdict.headers]
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": verdict.status,
                    "headers": _encode_headers(headers),
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            status = verdict.status
        else:
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            status = 403  # what every ASGI server answers a close before accept
        log = self.log
        if log.isEnabledFor(logging.INFO):
            log.info("asgi: handshake refused (%s): %s", status, verdict.reason)
        if self.on_event is not None:
            Observer(self.on_event, "server", log=log).refused(
                status, verdict.reason, _request_from_scope(scope).path, _peer(scope)
            )


__all__ = ["SERVER_OWNED_OPTIONS", "App", "AsgiConnection"]
