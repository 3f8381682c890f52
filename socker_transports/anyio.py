"""socker_transports.anyio: the async driver (asyncio, uvloop and trio via anyio).

A thin loop around `socker_transports.wire.Wire`: every protocol decision (the
handshake, limits, keepalive, close codes) comes from the wire; this module
only moves bytes, runs handlers and keeps time with `anyio.current_time()`.

Server::

    async with serve(flow, "127.0.0.1", 8765, max_size=2**16) as server:
        print(server.url)
        await server.serve_forever()   # until server.close() / shutdown()

Client::

    result = await run_client("ws://127.0.0.1:8765/", client_flow)
    # or, to send from outside the flow:
    async with connect("ws://127.0.0.1:8765/", client_flow) as client:
        client.send(b"hello")
        result = await client.wait_closed()

`**options` are exactly the fields of `wire.Options`, with the same defaults
(a misspelt name raises TypeError, a bad value `LocalProtocolError`).

Threads: the driver, its handlers and `Connection.send` / `close` must be used
from the event loop's thread (any task on it: broadcasting from another task is
fine). From another thread use `anyio.from_thread`.

Errors: a rejected or failed opening handshake raises `HandshakeError` from
`connect()` (its `.result` carries the HTTP status) and is returned as a
`CloseResult` by `run_client()`. Failing to reach the server raises from both:
the `OSError` itself (`ConnectionRefusedError`, `socket.gaierror`,
`ssl.SSLError`...), or `TimeoutError` when TCP and TLS take longer than
`open_timeout`. Nothing the peer does after that raises: it ends in a close code.
"""

from __future__ import annotations

import logging
import math
import ssl as ssl_module
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.streams.stapled
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from socker_core import Connection, Flow

from ._anyio_session import STREAM_ERRORS, _Session
from .wire import (
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    ClientTarget,
    CloseResult,
    HandshakeError,
    HandshakeHook,
    HttpHandler,
    Options,
    Wire,
    format_host,
)

logger = logging.getLogger("socker")

#: Bound (seconds) on a graceful shutdown when close_timeout is None.
_SHUTDOWN_FALLBACK = 10.0


# -- server ----------------------------------------------------------------------------


class Server:
    """A listening websocket server. Use `async with serve(...) as server:`.

    Leaving the `async with` block shuts down gracefully: stop accepting, close
    every connection with 1001, wait up to `close_timeout`, abort the rest.
    """

    def __init__(
        self,
        routes: Flow | Mapping[str, Flow],
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None,
        handshake_hook: HandshakeHook | None,
        http_handler: HttpHandler | None,
        options: Options,
    ) -> None:
        # Validate the routes now rather than on the first connection.
        Wire.server(routes, 0.0, options)
        self.routes = routes
        self.host = host
        self.options = options
        self.ssl = ssl
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._requested_port = port
        self.port = 0
        self._sessions: set[_Session] = set()
        self._open: dict[_Session, Connection] = {}
        self._accepting: anyio.CancelScope | None = None
        self._closing = False
        # Created on entry: anyio objects need a running event loop.
        self._stopped: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._cm: AbstractAsyncContextManager[Server] | None = None

    # -- public ------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl is not None else "ws"
        return f"{scheme}://{format_host(self.host)}:{self.port}"

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections (handshake done, not yet closed): e.g. for a broadcast
        with `conn.send(...)` from a task on this loop."""
        return frozenset(conn for conn in self._open.values() if conn.is_open)

    @property
    def active(self) -> int:
        """Every connection task still running, including those mid-handshake."""
        return len(self._sessions)

    def close(self) -> None:
        """Start a graceful shutdown; `await wait_closed()` for it to finish."""
        self._closing = True
        if self._accepting is not None:
            self._accepting.cancel()

    async def wait_closed(self) -> None:
        await self._stopped_event().wait()

    async def shutdown(self) -> None:
        """Graceful shutdown: returns when every connection task has ended."""
        self.close()
        await self._stopped_event().wait()

    async def serve_forever(self) -> None:
        """Wait until the server is shut down (by `close()` from another task)."""
        await self._stopped_event().wait()

    async def __aenter__(self) -> Server:
        if self._cm is not None:
            raise RuntimeError("a Server can be entered only once")
        self._cm = self._lifecycle()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    # -- internals ---------------------------------------------------------------

    def _stopped_event(self) -> anyio.Event:
        if self._stopped is None:
            raise RuntimeError("the server is not running: use `async with serve(...)`")
        return self._stopped

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Server]:
        self._stopped = stopped = anyio.Event()
        self._idle = anyio.Event()
        listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self._requested_port
        )
        self.port = listener.listeners[0].extra(SocketAttribute.local_port)
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._main, listener)
                try:
                    yield self
                except BaseException as exc:
                    # Re-raised below, outside the task group (which would wrap it
                    # in an exception group).
                    body_error = exc
                bound = self.options.close_timeout
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after((_SHUTDOWN_FALLBACK if bound is None else bound) + 1.0),
                ):
                    await self.shutdown()
                tg.cancel_scope.cancel()
        finally:
            await anyio.aclose_forcefully(listener)
            stopped.set()
        if body_error is not None:
            raise body_error

    async def _main(
        self,
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with anyio.create_task_group() as conns:
                with anyio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._closing:
                        accepting.cancel()
                    task_status.started()
                    async with anyio.create_task_group() as accept:
                        for sub in listener.listeners:
                            assert isinstance(sub, anyio.abc.SocketListener)
                            accept.start_soon(self._accept_loop, sub, conns)
                # Stop accepting, then close every connection with 1001.
                await anyio.aclose_forcefully(listener)
                for session in list(self._sessions):
                    session.close(SHUTDOWN_CODE, SHUTDOWN_REASON)
                bound = self.options.close_timeout
                with anyio.move_on_after(math.inf if bound is None else bound):
                    while self._sessions:
                        self._idle = idle = anyio.Event()
                        await idle.wait()
                if self._sessions:
                    logger.info(
                        "aborting %d connection(s) after close_timeout", len(self._sessions)
                    )
                conns.cancel_scope.cancel()
        finally:
            self._stopped_event().set()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, conns: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and friends: keep the server up
                logger.error("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            conns.start_soon(self._connection, stream)

    async def _connection(self, raw: anyio.abc.SocketStream) -> None:
        started = anyio.current_time()
        try:
            address = raw.extra(SocketAttribute.remote_address)
        except (OSError, anyio.TypedAttributeLookupError):
            address = "?"
        peer = f"{format_host(address[0])}:{address[1]}" if isinstance(address, tuple) else address
        stream: anyio.abc.ByteStream = raw
        try:
            if self.ssl is not None:
                timeout = self.options.open_timeout
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    stream = await TLSStream.wrap(
                        raw, server_side=True, ssl_context=self.ssl, standard_compatible=False
                    )
                if stream is raw:
                    logger.info("server %s: TLS handshake timed out", peer)
                    await anyio.aclose_forcefully(raw)
                    return
        except (*STREAM_ERRORS, anyio.EndOfStream) as exc:
            logger.info("server %s: TLS handshake failed: %s", peer, exc)
            await anyio.aclose_forcefully(raw)
            return
        wire = Wire.server(
            self.routes,
            started,
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            peer=peer,
        )
        session = _Session(stream, wire, on_open=self._opened)
        self._sessions.add(session)
        try:
            if self._closing:
                session.close(SHUTDOWN_CODE, SHUTDOWN_REASON)
            await session.run()
        except Exception:
            logger.exception("server %s: driver error", peer)
        finally:
            self._sessions.discard(session)
            self._open.pop(session, None)
            if not self._sessions and self._idle is not None:
                self._idle.set()

    def _opened(self, session: _Session) -> None:
        conn = session.conn
        if conn is not None:
            self._open[session] = conn


def serve(
    routes: Flow | Mapping[str, Flow],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    handshake_hook: HandshakeHook | None = None,
    http_handler: HttpHandler | None = None,
    **options: Any,
) -> Server:
    """A websocket server for `routes` (one Flow, or a mapping path -> Flow: 404
    for other paths). Use as `async with serve(...) as server:`; port 0 picks a
    free port (see `server.port` / `server.url`)."""
    return Server(
        routes,
        host,
        port,
        ssl=ssl,
        handshake_hook=handshake_hook,
        http_handler=http_handler,
        options=Options(**options),
    )


# -- client ----------------------------------------------------------------------------


class Client:
    """A client connection running `flow`. Use `async with connect(...) as client:`.

    Entering returns once the opening handshake succeeded (else `HandshakeError`);
    leaving waits for the flow to end, closing with 1000 if it is still open (1011
    if the block raised).
    """

    def __init__(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None,
        origin: str | None,
        headers: Sequence[tuple[str, str]],
        options: Options,
    ) -> None:
        flow.validate()
        target = ClientTarget.parse(url)
        secure = target.secure
        if ssl is not None and not secure:
            raise ValueError("ssl= needs a wss:// URL")
        self.url = url
        self.flow = flow
        self.host = target.host
        self.port = target.port
        self.path = target.path
        self.host_header = target.host_header
        self.ssl = (ssl or ssl_module.create_default_context()) if secure else None
        self.origin = origin
        self.headers = tuple(headers)
        self.options = options
        self._session: _Session | None = None
        self._cm: AbstractAsyncContextManager[Client] | None = None

    @property
    def conn(self) -> Connection:
        """The socker Connection (the same `conn` the handlers get)."""
        conn = self._live().conn
        assert conn is not None
        return conn

    @property
    def wire(self) -> Wire:
        return self._live().wire

    @property
    def subprotocol(self) -> str | None:
        return self._live().wire.subprotocol

    def send(self, data: bytes) -> None:
        """Send one binary message now, from outside the flow's handlers."""
        self._live().send(data)

    async def close(self, code: int = 1000, reason: str = "") -> CloseResult:
        """Close with `code` and wait for the connection to end."""
        session = self._live()
        session.close(code, reason)
        await session.done.wait()
        return session.result

    async def wait_closed(self) -> CloseResult:
        """Wait until the connection ends (flow complete, closed, or lost)."""
        session = self._live()
        await session.done.wait()
        return session.result

    async def __aenter__(self) -> Client:
        if self._cm is not None:
            raise RuntimeError("a Client can be entered only once")
        self._cm = self._lifecycle()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    def _live(self) -> _Session:
        if self._session is None:
            raise RuntimeError("the client is not connected: use `async with connect(...)`")
        return self._session

    async def _open_stream(self) -> anyio.abc.ByteStream:
        try:
            if self.ssl is None:
                return await anyio.connect_tcp(self.host, self.port)
            return await anyio.connect_tcp(
                self.host,
                self.port,
                ssl_context=self.ssl,
                tls_hostname=self.host,
                tls_standard_compatible=False,
            )
        except OSError as exc:
            # anyio reports "All connection attempts failed" with the real errors as
            # the cause; with one address, raise that one (ConnectionRefusedError...).
            if isinstance(exc.__cause__, OSError) and str(exc).startswith("All connection"):
                raise exc.__cause__ from None
            raise

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Client]:
        started = anyio.current_time()
        timeout = self.options.open_timeout
        with anyio.fail_after(math.inf if timeout is None else timeout):
            stream = await self._open_stream()
        try:
            peer = f"{format_host(self.host)}:{self.port}"
            wire = Wire.client(
                self.flow,
                self.host_header,
                started,
                self.options,
                path=self.path,
                origin=self.origin,
                headers=self.headers,
                peer=peer,
            )
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        session = _Session(stream, wire)
        self._session = session
        body_error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await session.opened.wait()
            if wire.handshake_status == 101:
                try:
                    yield self
                except BaseException as exc:
                    # Re-raised below, outside the task group (which would wrap it
                    # in an exception group).
                    body_error = exc
                session.close(1000 if body_error is None else 1011, "")
            # The task group waits for the connection to end (bounded by the wire's
            # close_timeout).
        if body_error is not None:
            raise body_error
        if wire.handshake_status != 101:
            raise HandshakeError(session.result)


def connect(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    **options: Any,
) -> Client:
    """Connect to `url` (ws:// or wss://) and run `flow` on the connection.
    Use as `async with connect(...) as client:`."""
    return Client(url, flow, ssl=ssl, origin=origin, headers=headers, options=Options(**options))


async def run_client(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    **options: Any,
) -> CloseResult:
    """Connect, run `flow` to its end, and return how the connection ended.

    A rejected handshake is a result (`handshake_status` is the HTTP status), not an
    error; an unreachable server raises `OSError`.
    """
    client = connect(url, flow, ssl=ssl, origin=origin, headers=headers, **options)
    try:
        async with client:
            return await client.wait_closed()
    except HandshakeError as exc:
        return exc.result


__all__ = [
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Client",
    "HandshakeError",
    "Server",
    "connect",
    "run_client",
    "serve",
]
