"""socker_transports.anyio: the async driver (asyncio, uvloop and trio via anyio).

A thin loop around `socker_transports.wire.Wire`: every protocol decision (the
handshake, limits, keepalive, close codes) comes from the wire; this module
only moves bytes, runs handlers and keeps time with `anyio.current_time()`.

How bytes move depends on the running backend: on asyncio (and uvloop) each
connection is an `asyncio.Protocol` with no task of its own
(`_asyncio_protocol`); on trio each connection is one task reading, writing and
keeping time (`_anyio_session._StreamSession`). Either way async handlers and
hooks run as tasks in the server's (or client's) task group, and leaving the
`async with` block leaves no task behind.

Server:

    async with serve(flow, "127.0.0.1", 8765, max_size=2**16) as server:
        print(server.url)
        await server.serve_forever()   # until server.close() / shutdown()

Client:

    result = await run_client("ws://127.0.0.1:8765/", client_flow)
    # or, to send from outside the flow:
    async with connect("ws://127.0.0.1:8765/", client_flow) as client:
        client.send(b"hello")
        result = await client.wait_closed()

`**options` are exactly the fields of `wire.Options`, with the same defaults
(typed as `Unpack[wire.OptionsDict]`: a misspelt name fails `mypy --strict`, and
raises TypeError at run time; a bad value raises `LocalProtocolError`).

Rooms and broadcast: `conn.join(room)` / `conn.leave(room)` in handlers, and
`server.broadcast(data, room=..., skip=...)` from any task on the loop (in a
handler, `conn.server` is the Server). The frame is built once and written to each
recipient at once: no task switch or cancel per recipient on any backend.

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

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import ssl as ssl_module
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.streams.stapled
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from socker_core import (
    Connection,
    Flow,
    MemorySessionStore,
    Registry,
    RoomRef,
    reconnect_delay,
)

from ._anyio_session import (
    STREAM_ERRORS,
    RawIO,
    Spawn,
    _SessionBase,
    _StreamSession,
    trio_raw_io,
)
from ._asyncio_protocol import asyncio_spawner, peer_name, session_factory, ssl_timeouts
from ._limits import effective_max_connections
from ._listen import bound_address, check_choice, check_listening, is_tcp, unix_listener
from ._rooms_surface import AsyncRoomsSurface
from .engine.cluster import ClusterRooms, ResyncHook, resolve_engine
from .engine.events import StreamPosition
from .engine.interface import Engine
from .engine.sessions import EngineSessions, keeps_sessions
from .wire import (
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    ClientTarget,
    CloseResult,
    EventHook,
    HandshakeError,
    HandshakeHook,
    HttpHandler,
    Options,
    OptionsDict,
    Wire,
    check_shutdown,
    format_host,
    send_through_flow,
    shutdown_reason,
    socket_address,
)

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # a dependency on 3.10 only
    from typing_extensions import Unpack


_SOCKER_LOGGER = logging.getLogger("socker")

#: Bound (seconds) on a graceful shutdown when close_timeout is None.
_SHUTDOWN_FALLBACK = 10.0

#: Listen backlog (anyio's default); asyncio's create_server would set 100.
_BACKLOG = 65536

#: Connections accepted per wakeup of a trio accept loop.
_ACCEPT_BATCH = 64


def _on_asyncio() -> bool:
    """True when the running anyio backend is asyncio (uvloop included)."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - anyio without sniffio runs asyncio only
        return True
    try:
        return bool(sniffio.current_async_library() == "asyncio")
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover
        return False


# -- server ----------------------------------------------------------------------------


class Server(AsyncRoomsSurface):
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
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        unix_socket: str | None = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        engine: str | Engine | None = None,
        on_resync: ResyncHook | None = None,
    ) -> None:
        check_choice(sock, unix_socket, reuse_port)
        self.on_event = on_event
        #: Where this server and its connections log (`logger=`).
        self.log = logger if logger is not None else _SOCKER_LOGGER
        if sock is not None:
            check_listening(sock)
        #: The cluster engine rooms go through (`engine=`), or None: in-process rooms.
        self.engine: Engine | None = resolve_engine(engine)
        self._cluster: ClusterRooms | None = None
        # Validate the routes now rather than on the first connection.
        Wire.server(routes, 0.0, options)
        self.sock = sock
        self.reuse_port = reuse_port
        #: The unix-domain socket path served (unix_socket=), else None.
        self.unix_socket = unix_socket
        self.routes = routes
        self.host = host
        self.options = options
        self.ssl = ssl
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._requested_port = port
        self.port = 0
        #: Detached (resumable) sessions, shared by this server's connections.
        self.session_store = MemorySessionStore()
        self._sessions: set[_SessionBase] = set()
        #: Connections answered 503 (max_connections), lingering until they end.
        self._refused: set[_SessionBase] = set()
        #: The most connections served at once (`Options.max_connections`, or the
        #: default under this process's descriptor limit: one per connection).
        #: Past it, new connections get 503 at once.
        self.max_connections = effective_max_connections(
            options.max_connections, fds_per_connection=1, threads_per_connection=0
        )
        self._open: dict[_SessionBase, Connection] = {}
        self._session_of: dict[Connection, _SessionBase] = {}
        #: Rooms and the recipients of a broadcast (socker_core's pure registry).
        self.registry = Registry()
        #: Resumable sessions in the engine (any worker resumes them), or None.
        self._keeper: EngineSessions | None = None
        #: room -> the last publication this worker delivered (its place in the stream).
        self._room_positions: dict[str, StreamPosition] = {}
        if self.engine is not None and keeps_sessions(self.engine, routes):
            self._keeper = EngineSessions(self, self.engine, log=self.log)
        if self.engine is not None:
            self._cluster = self._bridge(ClusterRooms, self.engine, on_resync, on_event)
        self._accepting: anyio.CancelScope | None = None
        self._closing = False
        self._close_code: int = SHUTDOWN_CODE
        self._close_reason = SHUTDOWN_REASON
        self._draining = False
        self._drain_timeout: float | None = None
        self._drain_scope: anyio.CancelScope | None = None
        self._spawn: Spawn | None = None  # start_soon of the connections' task group
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw_io: RawIO | None = None
        self._session_factory: Callable[..., asyncio.BaseProtocol] = asyncio.Protocol
        # Created on entry: anyio objects need a running event loop.
        self._stopped: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._cm: AbstractAsyncContextManager[Server] | None = None

    # -- public ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL clients use (for a unix socket: ws://localhost, with the
        client's `unix_socket=` set to `server.unix_socket`)."""
        scheme = "wss" if self.ssl is not None else "ws"
        if self.unix_socket is not None:
            return f"{scheme}://localhost"
        return f"{scheme}://{format_host(self.host)}:{self.port}"

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections (handshake done, not yet closed). To send to all of
        them, or to a room, use `broadcast`."""
        return frozenset(conn for conn in self._open.values() if conn.is_open)

    @property
    def active(self) -> int:
        """Every connection still being served, including those mid-handshake and
        those whose on_close hooks are still running: the count `max_connections`
        bounds (503 refusals are not counted)."""
        return len(self._sessions)

    # -- rooms (the shared surface is _rooms_surface; here: what moves bytes) ----

    def adopted(self, wire: Wire) -> None:
        """A restored session now runs on `wire` (its driver's Opened follows; until
        then deliveries reach it through its Stepper, on this same loop)."""

    def wire_of(self, conn: Connection) -> Wire | None:
        """The wire that moves `conn`'s bytes now (None: detached, or not open)."""
        session = self._session_of.get(conn)
        return None if session is None else session.wire

    @property
    def keeps_sessions(self) -> bool:
        """True when resumable sessions live in the engine (any worker resumes them)."""
        return self._keeper is not None

    def _push(
        self,
        recipients: list[Connection],
        payload: bytes,
        frame: bytes,
        origin: RoomRef | None = None,
    ) -> int:
        sessions = self._session_of
        now = self._now()
        count = 0
        for conn in recipients:
            session = sessions.get(conn)
            if session is not None:
                if session.push_frame(frame, payload, now, origin):
                    count += 1
                elif conn.is_detached:
                    # Its old transport is still winding down, its Stepper detached
                    # already: the Stepper keeps the message for the replay.
                    count += send_through_flow(conn, payload, origin)
            else:
                # Still opening (a broadcast from its own on_open hook: its Stepper is
                # in a call, and takes the message in order), or detached (the Stepper
                # keeps the message for the replay when it resumes).
                count += send_through_flow(conn, payload, origin)
        return count

    def close(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Start a graceful shutdown; `await wait_closed()` for it to finish.

        The server stops accepting at once (new connections are refused). Then
        every live connection is closed with `code` (1001 "server shutting down";
        1012 "service restart" when a new release takes over) and given
        `close_timeout` to finish its close handshake before it is aborted.

        With `drain=True` live connections are first left to run to completion
        (their flows end, or their peers leave), for at most `drain_timeout`
        seconds (None: no bound); whatever is still open then is closed with
        `code` as above. A later `close()` without `drain` ends the drain at once.
        """
        check_shutdown(code, drain_timeout)
        if self._closing:
            if not drain and self._draining:
                self._draining = False
                if self._drain_scope is not None:
                    self._drain_scope.cancel()
            return
        self._closing = True
        self._close_code, self._close_reason = int(code), shutdown_reason(code)
        self._draining, self._drain_timeout = drain, drain_timeout
        if self._accepting is not None:
            self._accepting.cancel()

    async def wait_closed(self) -> None:
        """Wait until the server has stopped and every connection ended."""
        await self._stopped_event().wait()

    async def shutdown(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Graceful shutdown (see `close`): returns when every connection has ended.
        If a shutdown is already under way, waits for that one."""
        if not self._closing:
            self.close(code, drain, drain_timeout=drain_timeout)
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
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream]
        if self.sock is not None or self.unix_socket is not None:
            raw = self.sock if self.sock is not None else unix_listener(self.unix_socket or "", 128)
            listener = anyio.streams.stapled.MultiListener(
                [await anyio.abc.SocketListener.from_socket(raw)]
            )
            host, port = bound_address(raw)
            if is_tcp(raw):
                self.host, self.port = host, port
        else:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self._requested_port, reuse_port=self.reuse_port
            )
            self.port = listener.listeners[0].extra(SocketAttribute.local_port)
        main = self._main_asyncio if _on_asyncio() else self._main_streams
        body_error: BaseException | None = None
        cluster = self._cluster
        try:
            # The engine (if any) is entered before the first connection and exited
            # after the last one ended, its queue drained (their leaves) first.
            async with (
                cluster if cluster is not None else contextlib.nullcontext(),
                anyio.create_task_group() as tg,
            ):
                if self._keeper is not None:
                    await tg.start(self._keeper.run)
                await tg.start(main, listener)
                try:
                    yield self
                except BaseException as exc:
                    # Re-raised below, outside the task group (which would wrap it
                    # in an exception group).
                    body_error = exc
                bound = self.options.close_timeout
                if not self._closing:
                    self.close()
                drain = self._drain_timeout if self._draining else 0.0
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(
                        (_SHUTDOWN_FALLBACK if bound is None else bound)
                        + 1.0
                        + (math.inf if drain is None else drain)
                    ),
                ):
                    await self.shutdown()
                tg.cancel_scope.cancel()
        finally:
            await anyio.aclose_forcefully(listener)
            if self.unix_socket is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_socket)
            stopped.set()
        if body_error is not None:
            raise body_error

    async def _main_asyncio(
        self,
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """asyncio: the loop accepts into `_ServerProtocol`s; this task owns the
        task group their handlers run in, and shuts them down."""
        self._loop = loop = asyncio.get_running_loop()
        self._session_factory = session_factory(loop)
        servers: list[asyncio.AbstractServer] = []
        extra: dict[str, Any] = {}
        if self.ssl is not None:
            extra = {"ssl": self.ssl, **ssl_timeouts(self.options.open_timeout, self._linger())}
        try:
            async with anyio.create_task_group() as conns:
                self._spawn = asyncio_spawner(conns.start_soon)
                for sub in listener.listeners:
                    raw = sub.extra(SocketAttribute.raw_socket)
                    if is_tcp(raw):
                        server = await loop.create_server(
                            self._new_protocol, sock=raw, backlog=_BACKLOG, **extra
                        )
                    else:
                        server = await loop.create_unix_server(
                            self._new_protocol, sock=raw, backlog=_BACKLOG, **extra
                        )
                    servers.append(server)
                with anyio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._closing:
                        accepting.cancel()
                    task_status.started()
                    await anyio.sleep_forever()
                for listening in servers:
                    listening.close()
                await self._close_all(conns)
        finally:
            for listening in servers:
                listening.close()
            self._spawn = None
            self._stopped_event().set()

    def _now(self) -> float:
        loop = self._loop
        if loop is not None:
            return loop.time()
        raw_io = self._raw_io
        return raw_io.current_time() if raw_io is not None else anyio.current_time()

    def _linger(self) -> float:
        bound = self.options.close_timeout
        return _SHUTDOWN_FALLBACK if bound is None else bound

    def _new_protocol(self) -> asyncio.BaseProtocol:
        loop = self._loop
        assert loop is not None and self._spawn is not None
        wire = Wire.server(
            self.routes,
            loop.time(),
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        return self._session_factory(
            loop,
            wire,
            self._spawn,
            on_made=self._made,
            on_open=self._opened,
            on_done=self._done,
        )

    def _full(self) -> bool:
        return len(self._sessions) >= self.max_connections

    def _admit(self, session: _SessionBase, now: float) -> None:
        """Count a new connection, or answer it 503 at once (max_connections)."""
        if self._full():
            self._refused.add(session)
            session.wire.refuse_busy(now, "server at max_connections")  # its one log line
            return
        self._sessions.add(session)
        if self._closing and not self._draining:
            session.close(self._close_code, self._close_reason)

    def _made(self, session: Any) -> None:
        assert session.transport is not None
        session.wire.peer = peer_name(session.transport)
        self._admit(session, session.loop.time())

    async def _close_all(self, conns: anyio.abc.TaskGroup) -> None:
        """Drain if asked (bounded), then close every connection with the close
        code (1001 by default), wait up to close_timeout, abort the rest."""
        if self._draining:
            bound = self._drain_timeout
            with anyio.move_on_after(math.inf if bound is None else bound) as scope:
                self._drain_scope = scope
                while self._sessions and self._draining:
                    self._idle = idle = anyio.Event()
                    await idle.wait()
            self._drain_scope = None
            self._draining = False
        for session in list(self._sessions):
            session.close(self._close_code, self._close_reason)
        bound = self.options.close_timeout
        with anyio.move_on_after(math.inf if bound is None else bound):
            while self._sessions or self._refused:
                self._idle = idle = anyio.Event()
                await idle.wait()
        if self._sessions:
            self.log.info("aborting %d connection(s) after close_timeout", len(self._sessions))
        for session in [*self._sessions, *self._refused]:
            session.abort()
        conns.cancel_scope.cancel()

    async def _main_streams(
        self,
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """trio (any backend but asyncio): accept loops, one task per connection."""
        self._raw_io = trio_raw_io()
        try:
            async with anyio.create_task_group() as conns:
                self._spawn = conns.start_soon
                with anyio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._closing:
                        accepting.cancel()
                    task_status.started()
                    async with anyio.create_task_group() as accept:
                        for sub in listener.listeners:
                            assert isinstance(sub, anyio.abc.SocketListener)
                            if self._raw_io is not None and self.ssl is None:
                                raw = sub.extra(SocketAttribute.raw_socket)
                                accept.start_soon(self._raw_accept_loop, raw, conns)
                            else:
                                accept.start_soon(self._accept_loop, sub, conns)
                # Stop accepting, then close every connection with 1001.
                await anyio.aclose_forcefully(listener)
                await self._close_all(conns)
        finally:
            self._spawn = None
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
                self.log.error("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            conns.start_soon(self._connection, stream)

    async def _raw_accept_loop(self, listening: socket.socket, conns: anyio.abc.TaskGroup) -> None:
        """trio without TLS: accept bare sockets (no stream objects: the session
        reads and writes the socket itself)."""
        raw_io = self._raw_io
        assert raw_io is not None
        while True:
            await raw_io.wait_readable(listening)  # the checkpoint between batches
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, address = listening.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EMFILE and friends: keep the server up
                    self.log.error("accept failed: %s", exc)
                    await anyio.sleep(0.1)
                    break
                try:
                    sock.setblocking(False)
                    if is_tcp(sock):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    sock.close()
                    continue
                conns.start_soon(self._raw_connection, sock, address)

    async def _raw_connection(self, sock: socket.socket, address: Any) -> None:
        raw_io = self._raw_io
        assert raw_io is not None and self._spawn is not None
        peer = f"{format_host(address[0])}:{address[1]}" if isinstance(address, tuple) else "?"
        wire = Wire.server(
            self.routes,
            raw_io.current_time(),
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            peer=peer,
            remote_address=socket_address(address),
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        session = _StreamSession(
            None,
            wire,
            self._spawn,
            sock=sock,
            raw_io=raw_io,
            on_open=self._opened,
            on_done=self._done,
        )
        self._admit(session, session._now())
        await session.run()

    async def _connection(self, raw: anyio.abc.SocketStream) -> None:
        raw_io = self._raw_io
        started = anyio.current_time() if raw_io is None else raw_io.current_time()
        sock = raw.extra(SocketAttribute.raw_socket)
        try:
            address = sock.getpeername()
        except OSError:
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
                    self.log.info("server %s: TLS handshake timed out", peer)
                    await anyio.aclose_forcefully(raw)
                    return
        except (*STREAM_ERRORS, anyio.EndOfStream) as exc:
            self.log.info("server %s: TLS handshake failed: %s", peer, exc)
            await anyio.aclose_forcefully(raw)
            return
        wire = Wire.server(
            self.routes,
            started,
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            peer=peer,
            remote_address=socket_address(address),
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        assert self._spawn is not None
        session = _StreamSession(
            stream,
            wire,
            self._spawn,
            sock=sock if stream is raw else None,
            raw_io=raw_io,
            on_open=self._opened,
            on_done=self._done,
        )
        self._admit(session, session._now())
        await session.run()

    def _opened(self, session: _SessionBase) -> None:
        conn = session.conn
        if conn is not None:
            self._open[session] = conn
            self._session_of[conn] = session

    def _done(self, session: _SessionBase) -> None:
        self._sessions.discard(session)
        self._refused.discard(session)
        conn = self._open.pop(session, None)
        if conn is not None and self._session_of.get(conn) is session:
            del self._session_of[conn]  # (a resumed session already maps to its new one)
        if not self._sessions and not self._refused and self._idle is not None:
            self._idle.set()


def serve(
    routes: Flow | Mapping[str, Flow],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    handshake_hook: HandshakeHook | None = None,
    http_handler: HttpHandler | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    engine: str | Engine | None = None,
    on_resync: ResyncHook | None = None,
    **options: Unpack[OptionsDict],
) -> Server:
    """A websocket server for `routes` (one Flow, or a mapping path -> Flow: 404
    for other paths). Use as `async with serve(...) as server:`; port 0 picks a
    free port (see `server.port` / `server.url`).

    Where it listens: `host:port` (with SO_REUSEPORT when `reuse_port=True`, so
    several processes can share a port), or `sock=`, an already bound and
    listening socket (systemd socket activation, a supervisor; the server closes
    it when it stops), or `unix_socket=`, a path for a unix-domain socket
    (a stale socket file is replaced, and removed when the server stops).

    `on_event` receives every connection's `wire.observe` events (see
    `socker_transports.metrics` for a Prometheus exporter); `logger` replaces
    the "socker" logger for this server and its connections.

    `engine` makes rooms cluster-wide (README "Scale-out"): a URL (`"memory://"`,
    `"redis://HOST:PORT/DB"`, `"unix:///path"`; see `engine.open_engine`) or an
    `Engine` instance; either way the server enters it when it starts (before the
    first connection: a Redis that cannot be reached then fails the start) and
    exits it when it stops, so pass an instance not entered elsewhere. `server.engine`
    is it. `on_resync(event, members)` is told when a room's sequence had a gap
    history could not fill (default: close those members with 4414)."""
    return Server(
        routes,
        host,
        port,
        ssl=ssl,
        handshake_hook=handshake_hook,
        http_handler=http_handler,
        options=Options(**options),
        sock=sock,
        reuse_port=reuse_port,
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        engine=engine,
        on_resync=on_resync,
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
        unix_socket: str | None = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        reconnect: bool = False,
    ) -> None:
        flow.validate()
        self.on_event = on_event
        self.log = logger if logger is not None else _SOCKER_LOGGER
        target = ClientTarget.parse(url)
        secure = target.secure
        if ssl is not None and not secure:
            raise ValueError("ssl= needs a wss:// URL")
        if unix_socket is not None and secure:
            raise ValueError(
                "unix_socket= serves ws:// only (TLS over a unix socket is not offered)"
            )
        #: The unix-domain socket connected to instead of the URL's host:port.
        self.unix_socket = unix_socket
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
        #: Reconnect and resume when the transport is lost (`socker.resume.v1`).
        self.reconnect = reconnect
        #: Transports opened after the first one (resume attempts that got a 101).
        self.reconnects = 0
        self._session: _SessionBase | None = None
        self._cm: AbstractAsyncContextManager[Client] | None = None
        self._wake: anyio.Event | None = None  # something changed (reconnect=True)
        self._final: anyio.Event | None = None  # the session really ended

    @property
    def conn(self) -> Connection:
        """The socker Connection (the same `conn` the handlers get)."""
        conn = self._live().conn
        assert conn is not None
        return conn

    @property
    def wire(self) -> Wire:
        """The connection's `Wire` (sans-I/O protocol state)."""
        return self._live().wire

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, or None."""
        return self._live().wire.subprotocol

    def send(self, data: bytes) -> None:
        """Send one binary message now, from outside the flow's handlers."""
        self._live().send(data)

    async def close(self, code: int = 1000, reason: str = "") -> CloseResult:
        """Close with `code` and wait for the connection to end."""
        session = self._live()
        session.close(code, reason)
        return await self.wait_closed()

    async def wait_closed(self) -> CloseResult:
        """Wait until the connection ends (flow complete, closed, or lost; with
        reconnect=True: until the session ends, across reconnects)."""
        session = self._live()
        if self._final is not None:
            await self._final.wait()
            return self._live().result
        assert session.done is not None
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

    def _live(self) -> _SessionBase:
        if self._session is None:
            raise RuntimeError("the client is not connected: use `async with connect(...)`")
        return self._session

    async def _open_stream(self) -> anyio.abc.ByteStream:
        try:
            if self.unix_socket is not None:
                return await anyio.connect_unix(self.unix_socket)
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

    def _wire(self, started: float, resume_from: Wire | None = None) -> Wire:
        return Wire.client(
            self.flow,
            self.host_header,
            started,
            self.options,
            path=self.path,
            origin=self.origin,
            headers=self.headers,
            peer=(
                f"unix:{self.unix_socket}"
                if self.unix_socket is not None
                else f"{format_host(self.host)}:{self.port}"
            ),
            on_event=self.on_event,
            logger=self.log,
            reconnect=self.reconnect,
            resume_from=resume_from,
        )

    def _poke(self, session: Any = None) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _connect(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        if _on_asyncio():
            return await self._connect_asyncio(spawn, opened, done, resume_from)
        return await self._connect_stream(
            spawn, opened, done, self.options.open_timeout, resume_from
        )

    async def _follow(self, spawn: Spawn) -> None:
        """reconnect=True: whenever the current transport is lost and its session
        detached, reconnect (backoff with jitter: socker_core.reconnect_delay) and
        resume, until the session really ends."""
        assert self._final is not None
        try:
            while True:
                wake = self._wake = anyio.Event()
                session = self._live()
                wire = session.wire
                if wire.detached:
                    await self._reconnect(spawn, wire)
                    continue
                if session.done is not None and session.done.is_set() and not wire.handed_off:
                    return
                await wake.wait()
        finally:
            self._final.set()

    async def _reconnect(self, spawn: Spawn, holder: Wire) -> None:
        attempt = 0
        while holder.detached:
            await anyio.sleep(reconnect_delay(attempt, random.random()))
            attempt += 1
            if not holder.detached:
                return  # the window ended meanwhile
            opened, done = anyio.Event(), anyio.Event()
            try:
                session = await self._connect(spawn, opened, done, resume_from=holder)
            except (OSError, TimeoutError) as exc:
                self.log.info("client: reconnect attempt %d failed: %s", attempt, exc)
                continue
            await opened.wait()
            if session.wire.handshake_status == 101:
                self._session = session
                self.reconnects += 1
                return
            await done.wait()

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Client]:
        opened, done = anyio.Event(), anyio.Event()
        timeout = self.options.open_timeout
        body_error: BaseException | None = None
        connect_error: Exception | None = None
        async with anyio.create_task_group() as tg:
            session: _SessionBase | None = None
            try:
                if _on_asyncio():
                    session = await self._connect_asyncio(tg.start_soon, opened, done)
                else:
                    session = await self._connect_stream(tg.start_soon, opened, done, timeout)
                if self.reconnect:
                    self._final = anyio.Event()
                    tg.start_soon(self._follow, tg.start_soon)
            except Exception as exc:
                # Re-raised below, unwrapped (OSError, TimeoutError...).
                connect_error = exc
            if session is not None:
                self._session = session
                try:
                    await opened.wait()
                    if session.wire.handshake_status == 101:
                        try:
                            yield self
                        except BaseException as exc:
                            # Re-raised below, outside the task group (which would
                            # wrap it in an exception group).
                            body_error = exc
                        self._live().close(1000 if body_error is None else 1011, "")
                    # The connection ends within the wire's close_timeout.
                    await done.wait()
                    if self._final is not None:
                        await self._final.wait()
                finally:
                    session.abort()  # a no-op unless cancelled
                    if self._session is not None and self._session is not session:
                        self._session.abort()
        if connect_error is not None:
            raise connect_error
        if body_error is not None:
            raise body_error
        assert session is not None
        if session.wire.handshake_status != 101:
            raise HandshakeError(session.result)
        self._session = self._session or session

    async def _connect_asyncio(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        loop = asyncio.get_running_loop()
        wire = self._wire(loop.time(), resume_from)
        session = session_factory(loop)(
            loop,
            wire,
            asyncio_spawner(spawn),
            opened=opened,
            done=done,
            on_detached=self._poke,
            on_done=self._poke,
        )
        extra: dict[str, Any] = {}
        if self.ssl is not None:
            bound = self.options.close_timeout
            extra = {
                "ssl": self.ssl,
                "server_hostname": self.host,
                **ssl_timeouts(
                    self.options.open_timeout, _SHUTDOWN_FALLBACK if bound is None else bound
                ),
            }
        timeout = self.options.open_timeout
        with anyio.fail_after(math.inf if timeout is None else timeout):
            if self.unix_socket is not None:
                await loop.create_unix_connection(lambda: session, self.unix_socket)
            else:
                await loop.create_connection(lambda: session, self.host, self.port, **extra)
        return session

    async def _connect_stream(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        timeout: float | None,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        started = anyio.current_time()
        with anyio.fail_after(math.inf if timeout is None else timeout):
            stream = await self._open_stream()
        try:
            wire = self._wire(started, resume_from)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        wire.remote_address = socket_address(stream.extra(SocketAttribute.remote_address, None))
        raw_io = trio_raw_io()
        sock = None
        if raw_io is not None and isinstance(stream, anyio.abc.SocketStream):
            sock = stream.extra(SocketAttribute.raw_socket)
        session = _StreamSession(
            stream,
            wire,
            spawn,
            sock=sock,
            raw_io=raw_io,
            opened=opened,
            done=done,
            on_detached=self._poke,
            on_done=self._poke,
        )
        spawn(session.run)
        return session


def connect(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    reconnect: bool = False,
    **options: Unpack[OptionsDict],
) -> Client:
    """Connect to `url` (ws:// or wss://) and run `flow` on the connection.
    Use as `async with connect(...) as client:`. With `unix_socket=` the client
    connects to that unix-domain socket; the URL still gives the Host header and
    the path (`ws://localhost/game`).

    `reconnect=True`: on a lost transport, reconnect (exponential backoff with
    jitter, see `socker_core.reconnect_delay`) and resume the session at its step
    (the server's route must have `resume_window`); `wait_closed()` returns when
    the session really ends, with its code (4410 and friends when a resume was
    refused: start a fresh connection then)."""
    return Client(
        url,
        flow,
        ssl=ssl,
        origin=origin,
        headers=headers,
        options=Options(**options),
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        reconnect=reconnect,
    )


async def run_client(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    reconnect: bool = False,
    **options: Unpack[OptionsDict],
) -> CloseResult:
    """Connect, run `flow` to its end, and return how the connection ended.

    A rejected handshake is a result (`handshake_status` is the HTTP status), not an
    error; an unreachable server raises `OSError`. `reconnect`: see `connect`.
    """
    client = connect(
        url,
        flow,
        ssl=ssl,
        origin=origin,
        headers=headers,
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        reconnect=reconnect,
        **options,
    )
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
