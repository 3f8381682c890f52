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

import logging
import socket
import ssl as ssl_module
import sys
import threading
from collections.abc import Collection, Mapping
from time import monotonic
from types import TracebackType

import anyio
import anyio.to_thread

from socker_core import (
    Connection,
    Flow,
    RoomRef,
)

from ._threaded_accept import _ServerAccept
from ._threaded_client import ClientConnection, connect, run_client
from ._threaded_link import BIG_RECV_SIZE as BIG_RECV_SIZE
from ._threaded_link import FALLBACK_TIMEOUT as FALLBACK_TIMEOUT
from ._threaded_link import RECV_SIZE as RECV_SIZE
from ._threaded_link import _Link, _links_by_conn, _links_lock, send_threadsafe
from .engine.cluster import LocalNumbering, ResyncHook
from .engine.events import StreamPosition
from .engine.interface import Engine
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


# -- server -------------------------------------------------------------------------


class Server(_ServerAccept):
    """A listening threaded server. Use `serve(...)` to make one."""

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

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


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
