"""The ASGI application: scopes in, connections (`AsgiConnection`) out."""

from __future__ import annotations

import inspect
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import anyio

from socker_core import Connection, Flow, LocalProtocolError, Registry, RoomRef, Stepper
from socker_core._codes import CloseCode

from .._rooms_surface import AsyncRoomsSurface
from ..engine.cluster import ClusterRooms, ResyncHook, resolve_engine
from ..engine.events import StreamPosition
from ..engine.interface import Engine
from ..wire import (
    SHUTDOWN_CODE,
    EventHook,
    HandshakeHook,
    HandshakeRequest,
    HttpHandler,
    HttpResponse,
    Options,
    check_shutdown,
    send_through_flow,
    shutdown_reason,
)
from ..wire.observe import Observer
from ..wire.policy import Accepted, Refused, check_request, handshake_verdict
from .connection import (
    _FALLBACK_LINGER,
    AsgiConnection,
    Message,
    Receive,
    Scope,
    SendFn,
    _encode_headers,
    _peer,
    _request_from_scope,
)
from .engine_lifetime import EngineLifetime

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


class App(AsyncRoomsSurface):
    """An ASGI application serving `routes` (one Flow for every path, or a
    path -> Flow mapping, paths relative to where the App is mounted).

    - `handshake_hook(request)`: as on the native servers (Accept / Reject, sync
      or async, bounded by `open_timeout`).
    - `http_handler(request)`: answers HTTP scopes (it sees `request.method`);
      None or no handler: 404.
    - `on_event(event)`: the `wire.observe` events, as on the native servers;
      `logger`: replaces the "socker" logger.
    - `engine`: rooms cluster-wide, exactly as `serve(..., engine=)` (a URL:
      `"memory://"`, `"redis://HOST:PORT/DB"`, `"unix:///path"`, or an `Engine` not
      entered elsewhere); `on_resync(event, members)` as on the native servers.
      The App enters it on lifespan startup, or on its first websocket scope when
      no lifespan reaches it (mounted in Starlette or FastAPI), and exits it on
      lifespan shutdown or `await app.shutdown()`. A websocket handshake that
      finds the store unreachable gets 503 (the next one tries again).
    - Rooms: `conn.join(room, info)` / `conn.leave(room)` in handlers, and the
      anyio Server's `room`, `rooms`, `broadcast`, `publish`, `presence` and
      `rooms_settled`, with the same meaning (`conn.server` is the App).
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
        engine: str | Engine | None = None,
        on_resync: ResyncHook | None = None,
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
        #: Live connections, id -> AsgiConnection.
        self.connections: dict[str, AsgiConnection] = {}
        #: Rooms and the recipients of a broadcast (socker_core's pure registry).
        self.registry = Registry()
        #: room -> the last publication this App delivered (its place in the stream).
        self._room_positions: dict[str, StreamPosition] = {}
        #: The cluster engine rooms go through (`engine=`), or None: in-process rooms.
        self.engine: Engine | None = resolve_engine(engine)
        self._cluster: ClusterRooms | None = None
        self._engine_life: EngineLifetime | None = None
        if self.engine is not None:
            self._cluster = self._bridge(ClusterRooms, self.engine, on_resync, on_event)
            self._engine_life = EngineLifetime(self._cluster, self.log)
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
        most `close_timeout` (+1 s) for the connections to end; then the engine
        (if any) is exited, its queued changes (the leaves) drained first."""
        check_shutdown(code, drain_timeout)
        self.close(code, drain)
        if drain:
            with anyio.move_on_after(math.inf if drain_timeout is None else drain_timeout):
                await self._wait_idle()
            self.close(code)
        linger = self.options.close_timeout
        with anyio.move_on_after((_FALLBACK_LINGER if linger is None else linger) + 1.0):
            await self._wait_idle()
        if self._engine_life is not None and self._cluster is not None:
            await self._engine_life.release(self._cluster.drain_timeout + 1.0)

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
                error = await self._enter_engine()
                if error is not None:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
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
        if isinstance(verdict, Accepted) and self._engine_life is not None:
            # No lifespan reached a mounted App: its first connection enters the engine.
            error = await self._enter_engine()
            if error is not None:
                verdict = Refused(503, f"the rooms engine is unavailable: {error}")
        if isinstance(verdict, Refused):
            await self._refuse(scope, send, verdict)
            return
        accept: Message = {"type": "websocket.accept", "subprotocol": verdict.subprotocol}
        if verdict.headers:
            accept["headers"] = _encode_headers(verdict.headers)
        await send(accept)
        stepper = Stepper(
            verdict.flow,
            max_queue=self.options.max_queue,
            # Unique across processes and machines, as the native servers' (the
            # member id rooms use on a shared engine): 96 random bits.
            id=secrets.token_urlsafe(12),
            registry=self.registry,
            server=self,
            remote_address=request.remote_address,
            request=request,
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

    async def _enter_engine(self) -> BaseException | None:
        """Enter the engine if the App has one and it is not entered yet."""
        life = self._engine_life
        if life is None or life.running:
            return None
        return await life.enter()

    # -- rooms (the shared surface is _rooms_surface; here: what moves bytes) ----

    def _push(
        self,
        recipients: list[Connection],
        payload: bytes,
        frame: bytes,
        origin: RoomRef | None = None,
    ) -> int:
        # Through each recipient's Stepper: in order with what its flow sends (an
        # on_open hook that joins and broadcasts included), then the connection's
        # own outgoing queue and writer task (`AsgiConnection`): a slow peer holds
        # only its own writer, and past its send bound it is dropped (4503).
        # `frame` is the native drivers' prebuilt frame: the ASGI server frames.
        count = 0
        for conn in recipients:
            count += send_through_flow(conn, payload, origin)
        return count

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
