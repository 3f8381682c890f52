"""The threaded Server's listening socket and accept thread: the server's set-up
(listener, engine, the accept thread started last), accepting, refusing past
max_connections (a 503 on the accept thread, lingered on), starting one connection
thread (`_Link`) per socket, and the shutdown that thread runs when it stops. The
public `socker_transports.threaded.Server` is a layer over it."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl as ssl_module
import threading
from collections.abc import Mapping
from time import monotonic
from typing import Any

from socker_core import (
    CloseCode,
    Connection,
    Flow,
    MemorySessionStore,
    Registry,
)

from ._limits import effective_max_connections
from ._listen import (
    bound_address,
    check_choice,
    check_listening,
    is_tcp,
    tcp_listener,
    unix_listener,
)
from ._rooms_surface import RoomsSurface
from ._threaded_link import (
    _WOULD_BLOCK,
    FALLBACK_TIMEOUT,
    RECV_SIZE,
    _Link,
    _links_by_conn,
    _links_lock,
)
from ._threaded_runner import _AsyncRunner
from ._threaded_store import _LockedStore
from ._threaded_wake import _wait, _Waker
from .engine.cluster import ROOM_STATE_LOST_REASON, LocalNumbering, ResyncHook, resolve_engine
from .engine.cluster_blocking import BlockingClusterRooms
from .engine.events import Resync, StreamPosition
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
    format_host,
    socket_address,
)

_SOCKER_LOGGER = logging.getLogger("socker")

#: Refused (503) sockets the accept thread lingers on at once; past it, closed at once.
_MAX_REFUSED = 256


class _ServerAccept(RoomsSurface):
    """The threaded Server's state, its accept thread and its shutdown."""

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
        backlog: int,
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
        self._cluster: BlockingClusterRooms | None = None
        self._numbering: LocalNumbering | None = None  # publish() without an engine
        #: Resumable sessions in the engine (any worker resumes them), or None.
        self._keeper: EngineSessions | None = None
        #: room -> the last publication this worker delivered (its place in the stream).
        self._room_positions: dict[str, StreamPosition] = {}
        # Validate the routes (and flows) now, not on the first connection.
        Wire.server(routes, 0.0, options, handshake_hook=handshake_hook)
        #: The unix-domain socket path served (unix_socket=), else None.
        self.unix_socket = unix_socket
        self.routes = routes
        self.options = options
        self.ssl = ssl
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._lock = threading.Lock()
        #: Detached (resumable) sessions. Every call into it happens under one
        #: link's lock, so `_store_lock` serialises the links (see _LockedStore).
        self.session_store = _LockedStore(MemorySessionStore())
        self._links: set[_Link] = set()
        #: Rooms and the recipients of a broadcast (socker_core's pure registry),
        #: behind a lock of its own: handlers on every connection thread join and
        #: leave while other threads broadcast.
        self.registry = Registry()
        self.registry.guard = threading.Lock()
        #: The most connections served at once (`Options.max_connections`, or the
        #: default under this process's descriptor and thread limits: each
        #: connection holds two descriptors and one thread). Past it, 503.
        self.max_connections = effective_max_connections(
            options.max_connections, fds_per_connection=2, threads_per_connection=1
        )
        # Refused sockets lingering (503 written, write side shut): fd -> (socket,
        # until when, bytes still drained). Only the accept thread touches it.
        self._refused: dict[int, tuple[socket.socket, float, int]] = {}
        self._closing = False
        self._close_code: int = SHUTDOWN_CODE
        self._close_reason = SHUTDOWN_REASON
        self._draining = False
        self._drain_timeout: float | None = None
        self._changed = threading.Condition(self._lock)  # a link ended, or the drain was cut
        self._stopped = threading.Event()
        self._waker = _Waker()
        try:
            if sock is not None:
                listener = sock
            elif unix_socket is not None:
                listener = unix_listener(unix_socket, backlog)
            else:
                listener = tcp_listener(host, port, backlog, reuse_port=reuse_port)
            listener.setblocking(False)
        except BaseException:
            self._waker.close()
            raise
        self._listener = listener
        self.host, self.port = bound_address(listener)
        if self.engine is not None:
            # Entered before the first connection (a store that cannot be reached
            # fails here), closed in _shut_down after the last one ended.
            cluster = self._bridge(BlockingClusterRooms, self.engine, on_resync, on_event)
            # The engine's thread must never wait for a connection's lock (its thread
            # may be waiting for the engine): the default resync posts the close.
            cluster.default_resync = self._close_for_resync
            try:
                cluster.start()
                if keeps_sessions(self.engine, routes):
                    # Resumable sessions live in the engine; the keeper's tasks run
                    # on the engine's own loop.
                    portal = cluster.blocking.portal
                    keeper = EngineSessions(self, self.engine, log=self.log, portal=portal)
                    portal.start_task(keeper.run)
                    self._keeper = keeper
            except BaseException:
                cluster.close()
                listener.close()
                self._waker.close()
                raise
            self._cluster = cluster
        self._runner = _AsyncRunner(f"socker-server-{self.port}")
        # Made here, not on the accept thread: the server's descriptors all exist
        # once `serve()` returns.
        self._selector = selectors.DefaultSelector()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"socker-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()

    def _close_for_resync(self, event: Resync, members: list[Connection]) -> None:
        """The default `on_resync` here (close with 4414), from the engine's thread
        without waiting for any connection's lock: posted to each member's link."""
        for conn in members:
            with _links_lock:
                link = _links_by_conn.get(conn)
            if link is None and not conn.is_detached:
                link = self._opening_link(conn)
            if link is not None:
                link.request_close(CloseCode.ROOM_STATE_LOST, ROOM_STATE_LOST_REASON)
            else:  # detached: no thread of its own, its Stepper ends the session
                conn.close(CloseCode.ROOM_STATE_LOST, ROOM_STATE_LOST_REASON)

    def _opening_link(self, conn: Connection) -> _Link | None:
        """The link of a connection whose on_open hooks run (rare: a scan)."""
        for link in self._snapshot():
            stepper = link.wire.stepper
            if stepper is not None and stepper.conn is conn:
                return link
        return None

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _accept_loop(self) -> None:
        """The accept thread: accepts until closing, then runs the shutdown."""
        try:
            self._accept()
        except Exception:  # pragma: no cover - a driver bug: still shut down cleanly
            self.log.exception("socker: accept loop failed")
        finally:
            self._closing = True
            self._listener.close()
            if self.unix_socket is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_socket)
            self._shut_down()

    def _accept(self) -> None:
        listener = self._listener
        waker = self._waker.fileno()
        with self._selector as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(waker, selectors.EVENT_READ)
            try:
                while not self._closing:
                    self._wait_accept(selector, waker)
                    while not self._closing:
                        try:
                            sock, address = listener.accept()
                        except _WOULD_BLOCK:
                            break
                        except OSError as exc:
                            self.log.warning("socker: accept failed: %s", exc)
                            # Back off (EMFILE and friends) without a sleep: until
                            # closing or 100 ms.
                            if _wait(None, False, False, waker, 0.1)[3]:
                                self._waker.drain()
                            break
                        with self._lock:
                            full = len(self._links) >= self.max_connections
                        if full:
                            self._refuse(selector, sock, address, "server at max_connections")
                        else:
                            self._start_link(sock, address, selector)
            finally:
                for sock, _, _ in self._refused.values():
                    sock.close()
                self._refused.clear()

    def _wait_accept(self, selector: selectors.BaseSelector, waker: int) -> None:
        """Until a connection, a wake-up or a refused socket's input (drained and
        dropped), expiring refused sockets past their linger bound."""
        refused = self._refused
        timeout = None
        if refused:
            timeout = max(0.0, min(until for _, until, _ in refused.values()) - monotonic())
        for key, _ in selector.select(timeout):
            if key.fd == waker:
                self._waker.drain()
            elif key.fd in refused:
                sock, until, left = refused[key.fd]
                try:
                    got = sock.recv(RECV_SIZE)
                except _WOULD_BLOCK:
                    continue
                except OSError:
                    got = b""
                left -= len(got)
                if got and left >= 0:
                    refused[key.fd] = (sock, until, left)
                else:
                    self._drop_refused(selector, key.fd)
        now = monotonic()
        for fd in [fd for fd, (_, until, _) in refused.items() if until <= now]:
            self._drop_refused(selector, fd)

    def _drop_refused(self, selector: selectors.BaseSelector, fd: int) -> None:
        sock, _, _ = self._refused.pop(fd)
        selector.unregister(sock)
        sock.close()

    def _refuse(
        self, selector: selectors.BaseSelector, sock: socket.socket, address: Any, reason: str
    ) -> None:
        """Answer 503 at once on the accept thread (no connection thread), then linger
        on the socket like a connection would, so the 503 is read, not reset."""
        now = monotonic()
        ip = socket_address(address)
        peer = f"{format_host(ip[0])}:{ip[1]}" if ip is not None else f"unix:{self.host}"
        wire = Wire.server(self.routes, now, self.options, peer=peer, logger=self.log)
        wire.refuse_busy(now, reason)  # its one log line
        if self.ssl is not None:
            # A 503 needs a TLS handshake first: not worth a thread. Closed at once.
            sock.close()
            return
        linger = wire.linger
        try:
            sock.setblocking(False)
            sock.send(wire.data_to_send())  # a small response: the socket buffer takes it
            if linger is None or len(self._refused) >= _MAX_REFUSED:
                sock.close()
                return
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        seconds, limit = linger
        self._refused[sock.fileno()] = (sock, now + seconds, limit)
        selector.register(sock, selectors.EVENT_READ)

    def _shut_down(self) -> None:
        if self._draining:
            bound = self._drain_timeout
            end = None if bound is None else monotonic() + bound
            with self._lock:
                while self._links and self._draining:
                    left = None if end is None else end - monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(left)
                self._draining = False
        links = self._snapshot()
        for link in links:
            link.request_close(self._close_code, self._close_reason)
        grace = self.options.close_timeout
        grace = FALLBACK_TIMEOUT if grace is None else grace
        end = monotonic() + grace + 1.0
        for link in links:
            link.join(max(0.0, end - monotonic()))
        late = [link for link in links if link.is_alive()]
        if late:
            self.log.info("socker: aborting %d connection(s) after close_timeout", len(late))
        for link in late:
            link.kill()
        for link in late:
            link.join(grace)
        if self._keeper is not None:
            with contextlib.suppress(Exception):
                self._cluster.blocking.portal.call(self._keeper.stop)  # type: ignore[union-attr]
        if self._cluster is not None:
            self._cluster.close()  # after the last connection: its leaves drained first
        self._runner.close(grace)
        self._waker.close()
        self._stopped.set()

    def _start_link(
        self, sock: socket.socket, address: Any, selector: selectors.BaseSelector
    ) -> None:
        now = monotonic()
        if isinstance(address, tuple) and len(address) >= 2:
            peer = f"{format_host(str(address[0]))}:{address[1]}"
        else:  # a unix-domain socket: the peer has no address of its own
            peer = f"unix:{self.host}"
        if is_tcp(sock):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        wire = Wire.server(
            self.routes,
            now,
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
        link = _Link(
            sock,
            wire,
            self._runner,
            name=f"socker-conn-{peer}",
            tls=self.ssl,
            on_done=self._link_done,
        )
        with self._lock:
            self._links.add(link)
        try:
            link.start()
        except RuntimeError:  # the OS thread limit (below max_connections' default)
            with self._lock:
                self._links.discard(link)
            link.waker.close()
            self._refuse(selector, sock, address, "cannot start a connection thread")

    def _link_done(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
            self._changed.notify_all()
