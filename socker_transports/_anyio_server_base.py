"""The anyio Server's state and bookkeeping: what it holds (set up in `__init__`),
how it counts, admits and forgets connections, and how it closes them all.

The accept paths (`_anyio_accept._ServerAccept`) and the public Server
(`socker_transports.anyio.Server`) are layers over this base.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl as ssl_module
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.streams.stapled

from socker_core import (
    Connection,
    Flow,
    MemorySessionStore,
    Registry,
)

from ._anyio_raw_io import RawIO
from ._anyio_session_base import Spawn, _SessionBase
from ._anyio_shared import _SHUTDOWN_FALLBACK, _SOCKER_LOGGER
from ._limits import effective_max_connections
from ._listen import check_choice, check_listening
from ._rooms_surface import AsyncRoomsSurface
from .engine.cluster import ClusterRooms, ResyncHook, resolve_engine
from .engine.events import StreamPosition
from .engine.interface import Engine
from .engine.sessions import EngineSessions, keeps_sessions
from .wire import (
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    EventHook,
    HandshakeHook,
    HttpHandler,
    Options,
    Wire,
)

if TYPE_CHECKING:
    from .anyio import Server


class _ServerBase(AsyncRoomsSurface):
    """The state every layer of the anyio Server uses, and its bookkeeping."""

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

    def _stopped_event(self) -> anyio.Event:
        if self._stopped is None:
            raise RuntimeError("the server is not running: use `async with serve(...)`")
        return self._stopped

    def _now(self) -> float:
        loop = self._loop
        if loop is not None:
            return loop.time()
        raw_io = self._raw_io
        return raw_io.current_time() if raw_io is not None else anyio.current_time()

    def _linger(self) -> float:
        bound = self.options.close_timeout
        return _SHUTDOWN_FALLBACK if bound is None else bound

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
