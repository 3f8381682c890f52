"""socker_transports.threaded: blocking sockets and threads, for programs with no event loop.

    from socker_transports import threaded

    with threaded.serve(flow, "127.0.0.1", 8765) as server:
        server.serve_forever()          # until server.shutdown() (or Ctrl-C)

    result = threaded.run_client("ws://127.0.0.1:8765/", client_flow)

Every protocol decision comes from `socker_transports.wire`; this driver only moves
bytes and runs handlers, so close codes and limits match the anyio driver.

Threads
    A server runs one accept thread and one thread per connection. A client runs one
    thread for its connection. A connection's thread owns its socket: it is the only
    thread that reads or writes it (writes are therefore serialized), using
    non-blocking I/O and `poll` on the socket plus a per-connection wake-up fd
    (an eventfd on Linux). Reads are batched (64 KiB per `recv`), writes send
    everything `Wire.data_to_send()` returned before asking for more, and the socket
    is not read while `Wire.wants_data` is False (backpressure). Keepalive, step
    timeouts and the handshake and close deadlines are the `poll` timeout computed
    from `Wire.next_deadline`: there is no timer thread.

Locking
    Every call into a connection's `Wire` (and so into its `Stepper` and its
    handlers) happens under that connection's lock (`threading.RLock`). Sync
    handlers run on the connection's thread. From any other thread (a game loop)
    send with `conn.send` (or `ClientConnection.send`): it takes the connection's
    lock (the Stepper's `guard`), so it may wait for a handler in progress, then
    lands in the outbox and wakes the connection's thread. `send_threadsafe(conn,
    data)` never blocks: the connection's own thread sends the message.

Rooms and broadcast
    `Server.broadcast(data, room=..., skip=...)` is safe from any thread and never
    blocks. The rooms registry has a lock of its own (taken after a connection's
    lock, never before). The frame is built once; for each recipient whose lock
    is free and whose thread holds no unwritten bytes, the broadcasting thread
    queues it and writes it with one non-blocking `send`; any other recipient
    gets it posted, and one eventfd write wakes its thread for everything posted
    before it wakes. Ending a connection (over `max_send_buffer`, a failed write)
    is left to its own thread.

Async handlers
    Steps, hooks and handshake hooks may be `async def`. They run on one private
    asyncio event loop per server (and one per client connection), in its own
    thread, started on first use and stopped (after pending `on_close` coroutines
    finish, bounded by `close_timeout`) when the server shuts down or the client
    connection ends. Each step of such a coroutine runs while holding its
    connection's lock, so it never races the connection's thread; a slow sync
    handler therefore delays the async handlers of the same server. When the
    coroutine finishes, the connection resumes; a `CancelAwait` (the connection
    closing) cancels it.

Shutdown
    `Server.shutdown()` (or leaving the `with` block) stops accepting, closes every
    connection with 1001, waits up to `close_timeout` for the close handshakes,
    aborts what is left and joins every thread the server started. `Server.close()`
    only starts it (safe from a handler). No thread ever blocks in `recv`: each
    waits in `poll` with its wake-up fd, so a shutdown reaches it at once.

Errors
    A rejected or failed opening handshake raises `HandshakeError` from `connect()`
    (its `.result` carries the HTTP status) and is returned as a `CloseResult` by
    `run_client()`. Failing to reach the server (refused, DNS, TLS, `open_timeout`
    during the TCP or TLS setup) raises the `OSError` (or `ssl.SSLError`) unchanged.
    As in the anyio driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl as ssl_module
import sys
import threading
from collections.abc import Collection, Mapping
from time import monotonic
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from socker_core import (
    CloseCode,
    Connection,
    Flow,
    MemorySessionStore,
    Registry,
    RoomRef,
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
from ._threaded_client import ClientConnection, connect, run_client
from ._threaded_link import _WOULD_BLOCK, _Link, _links_by_conn, _links_lock, send_threadsafe
from ._threaded_link import BIG_RECV_SIZE as BIG_RECV_SIZE
from ._threaded_link import FALLBACK_TIMEOUT as FALLBACK_TIMEOUT
from ._threaded_link import RECV_SIZE as RECV_SIZE
from ._threaded_runner import _AsyncRunner
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

logger = _SOCKER_LOGGER = logging.getLogger("socker")

__all__ = [
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "ClientConnection",
    "HandshakeError",
    "Server",
    "connect",
    "run_client",
    "send_threadsafe",
    "serve",
]

#: Refused (503) sockets the accept thread lingers on at once; past it, closed at once.
_MAX_REFUSED = 256


class _LockedStore:
    """A SessionStore shared by many connection threads: one lock around each call
    (a resume on one link hands the session over from another link)."""

    def __init__(self, store: MemorySessionStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    def add(self, session: Any, now: float) -> None:
        with self._lock:
            self.store.add(session, now)

    def claim(self, token: str, route: str, flow: Flow, new_token: str, now: float) -> Any:
        with self._lock:
            return self.store.claim(token, route, flow, new_token, now)

    def confirm(self, session: Any, now: float) -> None:
        with self._lock:
            self.store.confirm(session, now)

    def end(self, session: Any, code: int, now: float) -> None:
        with self._lock:
            self.store.end(session, code, now)

    def __len__(self) -> int:
        with self._lock:
            return len(self.store)


# -- server -------------------------------------------------------------------------


class Server(RoomsSurface):
    """A listening threaded server. Use `serve(...)` to make one."""

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

    @property
    def url(self) -> str:
        """The URL clients use (for a unix socket: ws://localhost, with the
        client's `unix_socket=` set to `server.unix_socket`)."""
        scheme = "wss" if self.ssl is not None else "ws"
        if self.unix_socket is not None:
            return f"{scheme}://localhost"
        return f"{scheme}://{format_host(self.host)}:{self.port}"

    def active_connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._links)

    def serve_forever(self) -> None:
        """Block until the server is shut down (`close()` or `shutdown()` from another
        thread or a handler); Ctrl-C (KeyboardInterrupt) shuts it down too."""
        try:
            self._stopped.wait()
        finally:
            self.shutdown()

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections (handshake done, not yet closed)."""
        found = []
        for link in self._snapshot():
            stepper = link.wire.stepper
            if stepper is not None and stepper.conn.is_open:
                found.append(stepper.conn)
        return frozenset(found)

    @property
    def active(self) -> int:
        """Every connection thread still running, including those mid-handshake: the
        count `max_connections` bounds (503 refusals are not counted)."""
        return self.active_connections()

    # -- rooms (the shared surface is _rooms_surface; here: the blocking calls) ---

    def publish(
        self,
        data: bytes,
        *,
        room: str,
        skip: Connection | Collection[Connection] | None = None,
    ) -> StreamPosition:
        """Broadcast `data` to `room`; returns its position once the store has it
        (with an engine: cluster-wide, blocking, EngineUnavailable when the store
        cannot take it; without: a local broadcast in this server's own numbering)."""
        cluster = self._cluster
        if cluster is not None:
            return cluster.publish(data, room, skip)
        self.broadcast(data, room=room, skip=skip)
        with self._lock:
            if self._numbering is None:
                self._numbering = LocalNumbering()
            return self._numbering.next(room)

    def presence(self, room: str) -> dict[str, dict[str, str]]:
        """Who is in `room`: member id (`conn.id`) -> its info. With an engine, every
        worker's members (blocking); without, this server's."""
        cluster = self._cluster
        if cluster is not None:
            return cluster.presence(room)
        return {conn.id: info for conn, info in self.registry.members(room).items()}

    # -- sessions kept in the engine (what engine/sessions.py asks of a server) ------

    def _now(self) -> float:
        return monotonic()

    async def rooms_settled(self) -> None:
        """Every room change queued so far reached the engine (no-op without one)."""
        cluster = self._cluster
        if cluster is not None:
            await anyio.to_thread.run_sync(cluster.settled)

    def adopted(self, wire: Wire) -> None:
        """A restored session now runs on `wire`: deliveries (on the engine's thread)
        reach it from now on, before its link's thread has seen Opened."""
        stepper = wire.stepper
        if stepper is None:
            return
        with self._lock:
            link = next((link for link in self._links if link.wire is wire), None)
        if link is not None:
            stepper.guard = link.lock
            with _links_lock:
                _links_by_conn[stepper.conn] = link

    def wire_of(self, conn: Connection) -> Wire | None:
        """The wire that moves `conn`'s bytes now (None: detached, or not open)."""
        link = _links_by_conn.get(conn)
        return None if link is None else link.session_wire

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
        links = _links_by_conn  # dict.get is atomic: no lock per recipient
        now = monotonic()
        count = 0
        for conn in recipients:
            link = links.get(conn)
            if link is not None:
                if link.push_frame(frame, payload, now, origin):
                    count += 1
                elif conn.is_detached:  # its old link is still ending: kept for replay
                    count += send_through_flow(conn, payload, origin)
                continue
            # Detached (between transports): the Stepper keeps the message for the
            # replay, under its guard. Otherwise not registered yet: its on_open
            # hooks are running, and only its own thread (a broadcast from those
            # hooks) may reach its Stepper now; from another thread (an engine's
            # delivery, say) the frame is posted to its link, which writes it once
            # the hooks are done: never skipped silently.
            current = threading.current_thread()
            stepper = current.wire.stepper if isinstance(current, _Link) else None
            if conn.is_detached or (stepper is not None and stepper.conn is conn):
                count += send_through_flow(conn, payload, origin)
            elif conn.is_open:
                opening = self._opening_link(conn)
                if opening is not None:
                    count += opening.push_frame(frame, payload, now, origin)
        return count

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

    def close(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Start a graceful shutdown and return at once (safe from handlers);
        `shutdown()` or `serve_forever()` wait for it to finish.

        The server stops accepting at once (new connections are refused); every
        live connection is closed with `code` (1001 "server shutting down"; 1012
        "service restart" when a new release takes over) and aborted if it has not
        finished within `close_timeout`. With `drain=True` live connections first
        run to completion, for at most `drain_timeout` seconds (None: no bound);
        a later `close()` without `drain` ends the drain at once."""
        check_shutdown(code, drain_timeout)
        with self._lock:
            if self._closing:
                if not drain and self._draining:
                    self._draining = False
                    self._changed.notify_all()
                return
            self._close_code, self._close_reason = int(code), shutdown_reason(code)
            self._draining, self._drain_timeout = drain, drain_timeout
            self._closing = True
        self._waker.wake()

    def shutdown(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Stop accepting, close every connection with `code` (see `close`; abort
        after close_timeout) and return once every thread this server started has
        ended. Idempotent and safe from any thread; from a handler it only starts
        the shutdown (like `close()`), since the handler's own thread is one of
        those to end. If a shutdown is under way, waits for that one."""
        if not self._closing:
            self.close(code, drain, drain_timeout=drain_timeout)
        current = threading.current_thread()
        if (
            current is self._accept_thread
            or current is self._runner.thread
            or any(link is current for link in self._snapshot())
        ):
            return
        self._accept_thread.join()

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

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


def serve(
    routes: Flow | Mapping[str, Flow],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    handshake_hook: HandshakeHook | None = None,
    http_handler: HttpHandler | None = None,
    backlog: int = socket.SOMAXCONN,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    engine: str | Engine | None = None,
    on_resync: ResyncHook | None = None,
    **options: Unpack[OptionsDict],
) -> Server:
    """Listen on `host:port` (0: an ephemeral port) and serve `routes` (one Flow for
    every path, or a mapping of path to Flow) until `Server.shutdown()`.

    Instead of `host:port`: `sock=`, an already bound and listening socket
    (systemd socket activation, a supervisor; closed when the server stops), or
    `unix_socket=`, a unix-domain socket path (a stale socket file is replaced,
    and removed when the server stops). `reuse_port=True` sets SO_REUSEPORT, so
    several processes can share one TCP port.

    `on_event` receives every connection's `wire.observe` events (called on the
    connection's thread); `logger` replaces the "socker" logger for this server.

    `engine` makes rooms cluster-wide (README "Scale-out"): a URL (`"memory://"`,
    `"redis://HOST:PORT/DB"`, `"unix:///path"`) or an `Engine` instance, run behind a
    `BlockingEngine` on a thread of its own; the server enters it here and exits it
    at shutdown. `on_resync(event, members)`: a room's sequence had a gap history
    could not fill (default: close those members with 4414); it runs on the
    engine's thread: send with `send_threadsafe`, never wait for a connection.

    `options` are the `wire.Options` fields (`max_size`, `close_timeout`, ...).
    Returns once listening; connections are accepted in a background thread.
    """
    return Server(
        routes,
        host,
        port,
        ssl=ssl,
        handshake_hook=handshake_hook,
        http_handler=http_handler,
        options=Options(**options),
        backlog=backlog,
        sock=sock,
        reuse_port=reuse_port,
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        engine=engine,
        on_resync=on_resync,
    )
