"""The ASGI application: scopes in, connections (`AsgiConnection`) out."""

from __future__ import annotations

import inspect
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import anyio

from socker_core import Flow, LocalProtocolError, Stepper
from socker_core._codes import CloseCode

from ..wire import (
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
