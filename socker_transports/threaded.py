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

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import random
import select
import selectors
import socket
import ssl as ssl_module
import sys
import threading
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from time import monotonic, sleep
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from socker_core import (
    HOOK_STEPS,
    Await,
    CancelAwait,
    CloseCode,
    Connection,
    ConnectionClosedError,
    Flow,
    LocalProtocolError,
    MemorySessionStore,
    Registry,
    RoomRef,
    is_sendable_close_code,
    reconnect_delay,
)
from socker_core._stepper import stepper_of

from ._limits import effective_max_connections
from ._listen import (
    bound_address,
    check_choice,
    check_listening,
    is_tcp,
    tcp_listener,
    unix_listener,
)
from .engine.cluster import ROOM_STATE_LOST_REASON, LocalNumbering, ResyncHook, resolve_engine
from .engine.cluster_blocking import BlockingClusterRooms
from .engine.events import Publication, Resync, StreamPosition
from .engine.interface import Engine
from .engine.sessions import EngineSessions, keeps_sessions
from .wire import (
    MAX_IOV,
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    AwaitHandshake,
    ClientTarget,
    CloseResult,
    EventHook,
    HandshakeError,
    HandshakeFailed,
    HandshakeHook,
    HttpHandler,
    Opened,
    Options,
    OptionsDict,
    Phase,
    Wire,
    WireEvent,
    check_shutdown,
    format_host,
    prepare_broadcast,
    prepare_delivery,
    send_through_flow,
    shutdown_reason,
    socket_address,
    unsent_part,
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


#: Bytes asked for per `recv`.
RECV_SIZE = 64 * 1024

#: A connection whose read filled RECV_SIZE carries big messages: from then on it
#: reads into a buffer of this size of its own (allocated then, once), handed to
#: the wire as a view: no allocation per read, and a 64 KiB message in one read.
BIG_RECV_SIZE = 256 * 1024

#: How long the final flush of a finished connection (an HTTP error response, the
#: last close frame) and the shutdown of a server wait when `close_timeout` is None.
FALLBACK_TIMEOUT = 10.0

_WOULD_BLOCK = (BlockingIOError, InterruptedError)
#: While a connection works through pending input (frames_per_turn), it lets the
#: other threads take the GIL this often (seconds).
_GIL_YIELD = 0.001
#: Refused (503) sockets the accept thread lingers on at once; past it, closed at once.
_MAX_REFUSED = 256
_HOOK_TOKEN = -1  # the resume queue's key for an awaited handshake hook
# What other threads post to a connection's thread (`_Waker.post`): (kind, a, b).
_SEND = 0  # (_SEND, data, None)
_CLOSE = 1  # (_CLOSE, code, reason)
_RESUME = 2  # (_RESUME, token, future): an awaited handler or hook settled
_FRAME = 3  # (_FRAME, frame, data): a broadcast's prebuilt frame (`Wire.send_frame`)


# -- wake-ups -------------------------------------------------------------------------


class _Waker:
    """A file descriptor `poll` can wait on, made readable from any thread; also a
    mailbox: items `post`ed from any thread wait (in order) for the owner's `take`.
    Slotted, and the mailbox list exists only while it holds something: an idle
    connection keeps no per-connection queue objects."""

    __slots__ = ("_closed", "_fd", "_lock", "_mail", "_pair")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._mail: list[tuple[int, Any, Any]] | None = None
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if sys.platform == "linux":
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - exercised on other platforms only
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._pair = (reader, writer)
            self._fd = reader.fileno()

    def fileno(self) -> int:
        return self._fd

    def wake(self) -> None:
        with self._lock:  # never write to a closed (and perhaps reused) fd
            if not self._closed:
                self._signal()

    def post(self, item: tuple[int, Any, Any]) -> None:
        """Queue `item` for the owner and wake it (dropped once closed)."""
        with self._lock:
            if self._closed:
                return
            if self._mail is not None:
                # Not taken yet since the post that signalled: the owner takes this
                # one with it (it takes under this lock, after draining the fd).
                self._mail.append(item)
                return
            self._mail = [item]
            self._signal()

    @property
    def empty(self) -> bool:
        """Nothing posted waits (a peek: a post may land right after)."""
        return self._mail is None

    def take(self) -> list[tuple[int, Any, Any]] | None:
        """Everything posted since the last `take`, in order (None: nothing)."""
        if self._mail is None:  # a racy peek: a post landing now also wakes the owner
            return None
        with self._lock:
            mail, self._mail = self._mail, None
        return mail

    def _signal(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_write(self._fd, 1)
            else:  # pragma: no cover
                self._pair[1].send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already readable (or closing): the waiter will wake anyway

    def drain(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_read(self._fd)
            else:  # pragma: no cover
                while self._pair[0].recv(4096):
                    pass
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mail = None
            if self._pair is None:
                os.close(self._fd)
            else:  # pragma: no cover
                for sock in self._pair:
                    sock.close()


def _wait(
    fd: int | None, read: bool, write: bool, waker: int, timeout: float | None
) -> tuple[bool, bool, bool, bool]:
    """Wait for the socket (read/write) or the waker.
    Returns (readable, writable, error, woken): drain the waker only when woken."""
    if hasattr(select, "poll"):
        poller = select.poll()
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        if fd is not None:
            poller.register(fd, mask)
        poller.register(waker, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        readable = writable = error = woken = False
        for ready_fd, events in ready:
            if ready_fd != fd:
                woken = True
                continue
            readable = bool(events & select.POLLIN)
            writable = bool(events & select.POLLOUT)
            error = bool(events & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
        return readable, writable, error, woken
    rlist = [waker] + ([fd] if fd is not None and read else [])  # pragma: no cover
    wlist = [fd] if fd is not None and write else []  # pragma: no cover
    r, w, _ = select.select(rlist, wlist, [], timeout)  # pragma: no cover
    return fd in r, fd in w, False, waker in r  # pragma: no cover


# -- the private asyncio loop ---------------------------------------------------------


class _Locked:
    """Await `awaitable`, running each of its steps while holding `lock`."""

    __slots__ = ("_awaitable", "_lock")

    def __init__(self, awaitable: Awaitable[object], lock: threading.RLock) -> None:
        self._awaitable = awaitable
        self._lock = lock

    def __await__(self) -> Generator[Any, Any, object]:
        with self._lock:
            iterator: Any = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                try:
                    yielded = iterator.throw(error) if error is not None else iterator.send(value)
                except StopIteration as stop:
                    return stop.value
            try:
                value = yield yielded
                error = None
            except GeneratorExit:
                with self._lock:
                    iterator.close()
                raise
            except BaseException as exc:
                value, error = None, exc


async def _drive(awaitable: Awaitable[object], lock: threading.RLock) -> object:
    return await _Locked(awaitable, lock)


def _discard(awaitable: Awaitable[object]) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


class _AsyncRunner:
    """One private asyncio event loop in its own thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._futures: set[concurrent.futures.Future[object]] = set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(
        self, awaitable: Awaitable[object], lock: threading.RLock
    ) -> concurrent.futures.Future[object]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the driver's event loop is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run, args=(loop,), name=f"{self._name}-asyncio", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            future = asyncio.run_coroutine_threadsafe(_drive(awaitable, lock), self._loop)
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def close(self, timeout: float) -> None:
        """Let pending coroutines finish (bounded by `timeout`), cancel the rest, stop."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():  # pragma: no cover - misuse guard
            loop.stop()
            return
        pending = list(self._futures)
        if pending:
            _, late = concurrent.futures.wait(pending, timeout)
            for future in late:
                future.cancel()
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout + 1.0)
        if thread.is_alive():  # pragma: no cover - a coroutine ignoring cancellation
            logger.warning("socker: %s event loop did not stop in time", self._name)


# -- one connection -------------------------------------------------------------------


class _Link(threading.Thread):
    """A socket, its Wire and the thread that drives them (the link is that thread:
    one object less per connection, and `run` starts one C call level shallower,
    which keeps the thread's stack to fewer touched pages)."""

    # Slots: Thread's own attributes stay in its (key-sharing) __dict__; ours would
    # overflow that into a full dict of about 1.5 KiB per connection.
    __slots__ = (
        "_big_read",
        "_carry",
        "_direct",
        "_done",
        "_holder",
        "_kill",
        "_on_done",
        "_opened",
        "_own_runner",
        "_pending",
        "_read_wants_write",
        "_redial",
        "_runner",
        "_tls",
        "_write_wants_read",
        "_writing",
        "ended",
        "grace",
        "lock",
        "reconnects",
        "result",
        "sock",
        "waker",
        "wire",
    )

    def __init__(
        self,
        sock: socket.socket,
        wire: Wire,
        runner: _AsyncRunner,
        *,
        name: str,
        tls: ssl_module.SSLContext | None = None,
        own_runner: bool = False,
        on_done: Callable[[_Link], None] | None = None,
        waitable: bool = False,
        redial: Callable[[Wire], tuple[socket.socket, Wire] | None] | None = None,
    ) -> None:
        # Memory per idle connection matters (a server holds thousands): requests
        # from other threads share the waker's lazily created mailbox, awaited
        # handlers get a dict on first use, and only a waitable (client) link has
        # Events (each is a Condition, two locks and a deque).
        super().__init__(name=name, daemon=True)
        self.sock: socket.socket = sock
        self.wire = wire
        self.lock = threading.RLock()
        self.waker = _Waker()
        self.ended = False  # set once the connection is over (before `result` is read)
        self.result: CloseResult | None = None
        self._opened: threading.Event | None = threading.Event() if waitable else None
        self._done: threading.Event | None = threading.Event() if waitable else None
        self._runner = runner
        self._own_runner = own_runner
        self._tls = tls
        self._on_done = on_done
        self._pending: dict[int, concurrent.futures.Future[object]] | None = None
        self._kill = False
        self._read_wants_write = False
        self._write_wants_read = False
        # Broadcast writes from other threads (see `push_frame`), all under the lock:
        # allowed on a plain socket only (an SSL object is not safe across threads);
        # `_writing` while this thread holds bytes taken from the wire but not yet
        # written; `_carry`, what a foreign write left unwritten, for this thread.
        self._direct = tls is None and not isinstance(sock, ssl_module.SSLSocket)
        self._writing = False
        self._carry: memoryview | None = None
        self._big_read: memoryview | None = None  # see BIG_RECV_SIZE
        #: Client with reconnect=True: opens a new transport resuming a detached wire.
        self._redial = redial
        self._holder: Wire | None = None  # while reconnecting: the wire holding the session
        self.reconnects = 0
        timeout = wire.options.close_timeout
        self.grace = FALLBACK_TIMEOUT if timeout is None else timeout
        wire.wakeup = self.waker.wake
        wire.stepper_guard = self.lock

    # -- requests from other threads --------------------------------------------

    def request_close(self, code: int, reason: str) -> None:
        """Close with `code` (validated by the caller); never blocks."""
        self.waker.post((_CLOSE, code, reason))

    def request_send(self, data: bytes) -> None:
        """Send `data` from the connection's thread; never blocks."""
        self.waker.post((_SEND, data, None))

    def push_frame(
        self, frame: bytes, data: bytes, now: float, origin: RoomRef | None = None
    ) -> bool:
        """Queue a broadcast's prebuilt frame from any thread; never blocks.

        If the connection's lock is free, its thread is not mid-write and nothing
        posted waits, the caller queues the frame on the wire and writes it to the
        socket itself (one `send`, no wake-up, no thread switch); otherwise it is
        posted, and the wake-up is one eventfd write for every message posted
        before the thread wakes. False when the connection was skipped (no longer
        open).

        Whatever would end the connection (a frame past `max_send_buffer`, a failed
        write) is left to the connection's own thread, so its on_close hooks run
        there as always."""
        lock = self.lock
        if self._direct and lock.acquire(False):  # (positional: a hot path)
            try:
                # Again under the lock; and not while anything posted waits: this
                # message must not overtake one posted before it.
                if self._direct and not self._writing and self.waker.empty:
                    wire = self.wire
                    if wire.buffered_amount + len(frame) <= wire.options.max_send_buffer:
                        if not wire.send_frame(frame, data, now, origin):  # cannot overflow
                            return False
                        out = wire.data_to_send()
                        if out:
                            self._write_now(out)
                        return True
            finally:
                lock.release()
        if self.ended:
            return False
        self.waker.post((_FRAME, frame, data if origin is None else (data, origin)))
        return True

    def _write_now(self, out: bytes | bytearray) -> None:
        """`push_frame`'s write, under the lock: what the socket does not take now
        is left for this connection's thread."""
        try:
            sent = self.sock.send(out)
        except _WOULD_BLOCK:
            sent = 0
        except OSError:
            # Its own thread finds the socket broken (read error or EOF) and ends
            # the connection; no more direct writes meanwhile.
            self._direct = False
            self.waker.wake()
            return
        if sent < len(out):
            self._carry = memoryview(out)[sent:]
            self._writing = True
            self.waker.wake()  # the thread writes the rest when the socket takes it

    def kill(self) -> None:
        """Abort now: no close handshake."""
        self._kill = True
        self.waker.wake()

    # -- waiting for a client link (connect, ClientConnection) -----------------

    def wait_opened(self) -> None:
        """Until the opening handshake succeeded or failed (or the link ended)."""
        assert self._opened is not None, "only a waitable link can be waited for"
        self._opened.wait()

    def wait_ended(self, timeout: float | None = None) -> bool:
        assert self._done is not None, "only a waitable link can be waited for"
        return self._done.wait(timeout)

    # -- the thread ----------------------------------------------------------

    @property
    def session_wire(self) -> Wire:
        """The wire holding the flow: the current one, or (during a reconnect
        attempt before its 101) the detached one."""
        wire = self.wire
        if wire.stepper is None and self._holder is not None:
            return self._holder
        return wire

    def run(self) -> None:
        try:
            if self._tls is None or self._tls_handshake():
                self._loop()
            if self.wire.detached:
                self._close_socket()
                if self._redial is not None:
                    self._follow()
                else:
                    self._keep_detached()
        except Exception as exc:
            self.wire.log.exception("socker: %s: driver error", self.name)
            with self.lock:
                self.wire.abort(monotonic(), f"driver error: {exc!r}")
        finally:
            self._finish()

    def _close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _keep_detached(self) -> None:
        """The socket is gone but the wire holds a detached session: serve its
        deadlines and mail until it resumes on another link (and the handlers it
        awaited finished) or ends."""
        wire = self.wire
        waker = self.waker.fileno()
        while True:
            with self.lock:
                now = monotonic()
                if self._kill:
                    wire.abort(now, "aborted by the driver", keep_session=False)
                self._service(now)
                wire.data_to_send()  # nowhere to go
                if wire.finished and not (wire.handed_off and self._pending):
                    return
                deadline = wire.next_deadline
            timeout = None if deadline is None else max(0.0, deadline - monotonic())
            if _wait(None, False, False, waker, timeout)[3]:
                self.waker.drain()

    def _idle(self, holder: Wire, delay: float) -> bool:
        """Serve the detached `holder` for `delay` seconds; False once it ended."""
        end = monotonic() + delay
        waker = self.waker.fileno()
        while True:
            with self.lock:
                now = monotonic()
                if self._kill:
                    holder.abort(now, "aborted by the driver", keep_session=False)
                self._service(now)
                holder.data_to_send()
                if not holder.detached:
                    return False
                deadline = holder.next_deadline
            if now >= end:
                return True
            until = end if deadline is None else min(end, deadline)
            if _wait(None, False, False, waker, max(0.0, until - monotonic()))[3]:
                self.waker.drain()

    def _follow(self) -> None:
        """reconnect=True: reconnect (backoff with jitter) and resume until the
        session ends. The link's thread moves every transport in turn."""
        assert self._redial is not None
        holder = self.wire
        attempt = 0
        while True:
            if not self._idle(holder, reconnect_delay(attempt, random.random())):
                return
            attempt += 1
            dialed = self._redial(holder)
            if dialed is None:
                continue
            sock, wire = dialed
            with self.lock:
                self._holder = holder
                self.sock, self.wire = sock, wire
                wire.wakeup = self.waker.wake
                wire.stepper_guard = self.lock
            self._loop()
            self._close_socket()
            with self.lock:
                self._holder = None
                if wire.handshake_status == 101:
                    self.reconnects += 1
                if wire.detached:
                    holder, attempt = wire, 0
                    continue
                if wire.handshake_status == 101:
                    return  # the session ended on this transport
                self.wire = holder  # that attempt failed before its 101
                if not holder.detached:
                    return

    def _finish(self) -> None:
        with self.lock:
            self._direct = False  # no foreign write to a closed (perhaps reused) fd
            self._carry = None
            with contextlib.suppress(OSError):
                self.sock.close()
        with self.lock:
            now = monotonic()
            if not self.wire.should_close_transport or self.wire.detached:
                self.wire.abort(now, "connection ended", keep_session=False)
            self._deliver(now)
            self.wire.collect(now)
            self._dispatch(self.wire.events())
            self.wire.data_to_send()  # nowhere to go any more
            pending, self._pending = self._pending, None
            for future in (pending or {}).values():
                future.cancel()
            self.result = self.wire.result
            if self.wire.stepper is not None:
                with _links_lock:
                    if _links_by_conn.get(self.wire.stepper.conn) is self:
                        del _links_by_conn[self.wire.stepper.conn]
        self.waker.close()
        if self._own_runner:
            self._runner.close(self.grace)
        self.ended = True
        if self._opened is not None and self._done is not None:
            self._opened.set()
            self._done.set()
        if self._on_done is not None:
            self._on_done(self)

    def _tls_handshake(self) -> bool:
        """The server side of TLS, bounded by open_timeout and interruptible."""
        assert self._tls is not None
        try:
            self.sock.setblocking(False)
            sock = self._tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            with self.lock:
                self.wire.abort(monotonic(), f"TLS setup failed: {exc}")
            return False
        self.sock = sock
        while True:
            with self.lock:
                now = monotonic()
                self._service(now)
                deadline = self.wire.next_deadline
                if self.wire.should_close_transport:
                    return False  # handshake timeout or shutdown: nothing sensible to send
            if self._kill:
                with self.lock:
                    self.wire.abort(now, "aborted by the driver")
                return False
            try:
                sock.do_handshake()
                return True
            except ssl_module.SSLWantReadError:
                read, write = True, False
            except ssl_module.SSLWantWriteError:
                write, read = True, False
            except (ssl_module.SSLError, OSError) as exc:
                with self.lock:
                    self.wire.abort(monotonic(), f"TLS handshake failed: {exc}")
                return False
            timeout = None if deadline is None else deadline - monotonic()
            if _wait(sock.fileno(), read, write, self.waker.fileno(), timeout)[3]:
                self.waker.drain()

    def _service(self, now: float) -> None:
        """Everything the connection's thread does under the lock before I/O."""
        wire = self.wire
        self._deliver(now)
        wire.collect(now)
        deadline = wire.next_deadline
        if deadline is not None and now >= deadline:
            wire.tick(now)
        self._dispatch(wire.events())

    def _loop(self) -> None:
        sock = self.sock
        wire = self.wire
        waker = self.waker.fileno()
        out: list[bytes | bytearray | memoryview] | None = None
        # A plain socket writes the wire's chunks unjoined, in one sendmsg (an SSL
        # socket has none: the wire joins them).
        vectored = not isinstance(sock, ssl_module.SSLSocket)
        flush_deadline: float | None = None
        last_yield = monotonic()
        while True:
            with self.lock:
                now = monotonic()
                if wire.input_pending:
                    # The rest of the last read, one `frames_per_turn` budget per
                    # pass: the lock is free between passes for other threads.
                    wire.receive_pending(now)
                self._service(now)
                carried = out is not None  # a partial write from an earlier pass
                if not carried:
                    if self._carry is not None:  # a broadcast's write left some
                        out, self._carry = [self._carry], None
                    elif not wire.input_pending:
                        # (While input is pending the output waits for the last turn,
                        # or for write_limit: one write per read, not per turn.)
                        if vectored:
                            out = wire.chunks_to_send() or None
                        else:
                            data = wire.data_to_send()
                            if data:
                                out = [data]
                            del data
                    self._writing = out is not None
                wants = wire.wants_data
                closing = wire.should_close_transport
                deadline = wire.next_deadline
                more_input = wire.input_pending
                linger = wire.linger if closing else None
            if self._kill:
                with self.lock:
                    wire.abort(now, "aborted by the driver")
                return
            if out is not None:
                try:
                    out = self._send(sock, out)
                except OSError as exc:
                    with self.lock:
                        wire.abort(monotonic(), f"write failed: {exc}")
                        wire.data_to_send()
                    out = None
                    continue
                if out is None:
                    # Broadcasts may write directly again. No lock needed: while
                    # `_writing` is set, this thread alone owns the socket's writes.
                    self._writing = False
                    if carried:
                        # A write started in an earlier pass is done: the wire may
                        # hold more output since then (and may accept data again).
                        continue
            if closing:
                if out is None:
                    if linger is not None and not isinstance(sock, ssl_module.SSLSocket):
                        self._linger(sock, *linger)
                    return
                if flush_deadline is None:
                    flush_deadline = now + self.grace
                elif now >= flush_deadline:
                    return
                wants, deadline = False, flush_deadline
            elif wants:
                try:
                    received = self._recv(sock)
                except OSError as exc:
                    with self.lock:
                        wire.abort(monotonic(), f"read failed: {exc}")
                    continue
                if received is not None:
                    with self.lock:
                        wire.receive_data(received or None, monotonic())
                    del received  # an idle connection keeps no last read alive
                    continue
            if more_input and out is None:
                # The next turn at once (nothing new is read). Every _GIL_YIELD
                # seconds of turns, first a sleep(0) (some 50 us), which lets the
                # other connections' threads take the GIL: otherwise each of their
                # steps waits for the interpreter's switch interval (5 ms), and a
                # witness's p99 under a flood was ~100 ms.
                if now - last_yield >= _GIL_YIELD:
                    sleep(0)
                    last_yield = monotonic()
                continue
            timeout = None if deadline is None else deadline - monotonic()
            pending = out is not None
            read = (wants and not self._read_wants_write) or (pending and self._write_wants_read)
            write = (pending and not self._write_wants_read) or (wants and self._read_wants_write)
            _, _, error, woken = _wait(sock.fileno(), read, write, waker, timeout)
            if woken:
                self.waker.drain()
            if error and not read and not write:
                with self.lock:
                    wire.abort(monotonic(), "connection lost")

    def _linger(self, sock: socket.socket, seconds: float, limit: int) -> None:
        """Half-close, then read and discard until the peer's EOF (at most `seconds`
        and `limit` bytes), so that our last bytes (an HTTP error, a close frame)
        are read instead of being destroyed by the reset that closing a socket with
        unread input sends. A `kill` ends it at once."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        end = monotonic() + seconds
        waker = self.waker.fileno()
        while limit >= 0 and not self._kill:
            try:
                got = sock.recv(RECV_SIZE)
            except _WOULD_BLOCK:
                left = end - monotonic()
                if left <= 0:
                    return
                if _wait(sock.fileno(), True, False, waker, left)[3]:
                    self.waker.drain()
                continue
            except OSError:
                return
            if not got:
                return
            limit -= len(got)

    def _recv(self, sock: socket.socket) -> bytes | memoryview | None:
        """One read: the bytes (b"" at end of file), or None when there are none yet.
        (A function of its own: the usual BlockingIOError would otherwise give the
        long-lived `_loop` frame a frame object, kept for the connection's life.)"""
        big = self._big_read
        try:
            if big is not None:
                received: bytes | memoryview = big[: sock.recv_into(big)]
            else:
                received = sock.recv(RECV_SIZE)
                if len(received) == RECV_SIZE:
                    self._big_read = memoryview(bytearray(BIG_RECV_SIZE))
        except _WOULD_BLOCK:
            return None
        except ssl_module.SSLWantReadError:
            self._read_wants_write = False
            return None
        except ssl_module.SSLWantWriteError:
            self._read_wants_write = True
            return None
        self._read_wants_write = False
        return received

    def _send(
        self, sock: socket.socket, out: list[bytes | bytearray | memoryview]
    ) -> list[bytes | bytearray | memoryview] | None:
        """Write as much of `out` as the socket takes now (several buffers: one
        `sendmsg`); return what is left."""
        while out:
            try:
                sent = sock.sendmsg(out[:MAX_IOV]) if len(out) > 1 else sock.send(out[0])
            except _WOULD_BLOCK:
                self._write_wants_read = False
                return out
            except ssl_module.SSLWantWriteError:
                self._write_wants_read = False
                return out
            except ssl_module.SSLWantReadError:
                self._write_wants_read = True
                return out
            self._write_wants_read = False
            out = unsent_part(out, sent)
        return None

    # -- async handlers (under the lock) ---------------------------------------

    def _dispatch(self, events: list[WireEvent]) -> None:
        for event in events:
            if isinstance(event, Await):
                self._start(event.token, event.awaitable, resume=event.step not in HOOK_STEPS)
            elif isinstance(event, CancelAwait):
                if self._pending is not None:
                    future = self._pending.pop(event.token, None)
                    if future is not None:
                        future.cancel()
            elif isinstance(event, AwaitHandshake):
                self._start(_HOOK_TOKEN, event.awaitable, resume=True)
            elif isinstance(event, Opened):
                if self.wire.stepper is not None:
                    self.wire.stepper.guard = self.lock
                    with _links_lock:
                        _links_by_conn[self.wire.stepper.conn] = self
                if self._opened is not None:
                    self._opened.set()
            elif isinstance(event, HandshakeFailed) and self._opened is not None:
                self._opened.set()

    def _start(self, token: int, awaitable: Awaitable[object], *, resume: bool) -> None:
        try:
            future = self._runner.submit(awaitable, self.lock)
        except RuntimeError as exc:
            _discard(awaitable)
            future = concurrent.futures.Future()
            future.set_exception(exc)
        if not resume:
            return
        if self._pending is None:
            self._pending = {}
        self._pending[token] = future
        future.add_done_callback(functools.partial(self._settled, token))

    def _settled(self, token: int, future: concurrent.futures.Future[object]) -> None:
        # Runs on the event loop's thread (or wherever the future was cancelled).
        self.waker.post((_RESUME, token, future))

    def _deliver(self, now: float) -> None:
        """Act on what other threads posted (sends, closes, settled awaits), in order."""
        mail = self.waker.take()
        if mail is None:
            return
        wire = self.session_wire
        for kind, first, second in mail:
            if kind == _SEND:
                if wire.is_open or wire.detached:
                    wire.send(first, now)  # detached: kept for replay
                else:
                    self.wire.log.debug(
                        "socker: %s: dropped a send_threadsafe after close", self.name
                    )
            elif kind == _FRAME:
                if type(second) is tuple:  # (data, origin): a cluster room delivery
                    wire.send_frame(first, second[0], now, second[1])
                else:
                    wire.send_frame(first, second, now)  # skipped if no longer open
            elif kind == _CLOSE:
                # The first one wins; later ones are no-ops. A close during a
                # reconnect attempt ends the session where it is held.
                wire.close(first, second, now)
            else:
                self._resume(first, second, now)

    def _resume(self, token: int, future: concurrent.futures.Future[object], now: float) -> None:
        wire = self.wire
        pending = self._pending
        if pending is None or pending.get(token) is not future:
            return  # cancelled, or superseded
        del pending[token]
        error: BaseException | None
        if future.cancelled():
            error = asyncio.CancelledError("the awaited handler was cancelled")
        else:
            error = future.exception()
        if token == _HOOK_TOKEN:
            if wire.phase is Phase.HOOK:
                wire.finish_handshake(error if error is not None else future.result(), now)
        elif error is not None:
            wire.resume_error(token, error, now)
        else:
            wire.resume(token, future.result(), now)


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


#: Each live connection's link, for `send_threadsafe` (entries leave in `_Link._finish`).
_links_by_conn: dict[Connection, _Link] = {}
_links_lock = threading.Lock()


def send_threadsafe(conn: Connection, data: bytes) -> None:
    """Send `data` on `conn` (a connection of this driver) from any thread, without
    blocking: the connection's own thread sends it, in call order.

    Use this rather than `conn.send` from threads other than the connection's own
    (handlers, hooks and its async handlers may use `conn.send`). Raises
    ConnectionClosedError if the connection is already closing; a send that races
    with the close is dropped.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"send_threadsafe() takes bytes, got {type(data).__name__}")
    with _links_lock:
        link = _links_by_conn.get(conn)
    if not conn.is_open or (link is not None and link.ended):
        raise ConnectionClosedError(
            "cannot send: the connection is not open", conn.close_code, conn.close_reason
        )
    if link is None:
        # Not registered yet: its on_open hooks are still running on the connection's
        # thread (or it belongs to another driver). The stepper's outbox takes it.
        conn.send(bytes(data))
        return
    link.request_send(bytes(data))


# -- server -------------------------------------------------------------------------


class Server:
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
            cluster = BlockingClusterRooms(
                self.engine,
                self.registry,
                self._deliver,
                on_resync=on_resync,
                on_event=on_event,
                log=self.log,
                on_joined=self._joined,
            )
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

    # -- rooms -------------------------------------------------------------------

    def room(self, name: str) -> frozenset[Connection]:
        """The open connections in room `name`."""
        return self.registry.room(name)

    @property
    def rooms(self) -> frozenset[str]:
        """The names of the rooms that have members."""
        return self.registry.rooms

    def broadcast(
        self,
        data: bytes,
        *,
        room: str | None = None,
        skip: Connection | Collection[Connection] | None = None,
    ) -> int:
        """Send `data` to every open connection (or every member of `room`) except
        `skip` (a connection or a collection of them); returns how many it was
        queued for. Safe from any thread, in a handler or not, and never blocks.
        A connection that is closing, or that `max_send_buffer` drops, is skipped:
        nothing raises into the caller. The frame is built once; a recipient whose
        thread is idle gets it written by the caller at once (one `send`), a busy
        one from its own thread (one wake-up for all it was sent meanwhile).

        With an `engine`, `room=` goes cluster-wide (every member on every worker,
        in the room's one order): it blocks until the store has the publication and
        raises EngineUnavailable when it cannot; the count is of the local members
        it will reach. Without `room=` a broadcast stays on this worker."""
        cluster = self._cluster
        if cluster is not None and room is not None:
            return cluster.broadcast(data, room, skip)
        recipients, payload, frame = prepare_broadcast(self.registry, data, room, skip)
        return self._push(recipients, payload, frame)

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

    def _deliver(self, publication: Publication, skip_ids: frozenset[str], payload: bytes) -> int:
        """The one delivery of an engine's publication to this worker's members of its
        room (but `skip_ids`), on the engine's thread: pushed like a broadcast."""
        room = publication.room
        self._room_positions[room] = StreamPosition(publication.offset, publication.epoch)
        recipients, frame = prepare_delivery(self.registry, room, skip_ids, payload)
        if not recipients:
            return 0
        origin = RoomRef(room, publication.epoch, publication.offset)  # for the ledger
        return self._push(recipients, payload, frame, origin)

    # -- sessions kept in the engine (what engine/sessions.py asks of a server) ------

    def _now(self) -> float:
        return monotonic()

    def room_position(self, room: str) -> StreamPosition | None:
        """The last publication of `room` this worker delivered (None: none yet)."""
        return self._room_positions.get(room)

    def _joined(self, conn: Connection, room: str, position: StreamPosition) -> None:
        """A member's join reached the engine (see the anyio Server's `_joined`)."""
        cursor = self._room_positions.setdefault(room, position)
        replay = stepper_of(conn).replay
        if replay is not None and replay.ledger is not None and room in conn.rooms:
            # No lock: joined_at is one atomic setdefault (this runs on the engine's
            # queue thread, which a connection thread holding its lock may wait for).
            replay.ledger.joined_at(room, cursor.epoch, cursor.offset)

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


# -- client -------------------------------------------------------------------------


class ClientConnection:
    """A client connection running its flow on its own thread. Use `connect(...)`:

        with connect(url, flow) as client:
            client.send(b"hello")            # from any thread
            result = client.wait_closed(5)

    Leaving the `with` block closes with 1000 if the connection is still open (1011 if
    the block raised), waits for it to end (aborting after `close_timeout`) and joins
    its threads.
    """

    def __init__(self, link: _Link) -> None:
        self._link = link

    @property
    def reconnects(self) -> int:
        """Transports opened after the first one (resume attempts that got a 101)."""
        return self._link.reconnects

    @property
    def conn(self) -> Connection:
        """The socker Connection (the same `conn` the handlers get)."""
        stepper = self._link.session_wire.stepper
        assert stepper is not None  # connect() raised HandshakeError otherwise
        return stepper.conn

    @property
    def wire(self) -> Wire:
        """The connection's `Wire` (sans-I/O protocol state)."""
        return self._link.wire

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, or None."""
        return self._link.wire.subprotocol

    @property
    def closed(self) -> bool:
        """True once the connection has ended (see `wait_closed`)."""
        return self._link.ended

    def send(self, data: bytes) -> None:
        """Send one binary message; safe from any thread and never blocks (the
        connection's thread sends it, in call order). Raises ConnectionClosedError
        once the connection is closing."""
        send_threadsafe(self.conn, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (a no-op once closing). Returns at once: use
        `wait_closed()` to wait for the end."""
        if not is_sendable_close_code(code):
            raise LocalProtocolError(f"close code {code} cannot be sent in a close frame")
        if len(reason.encode("utf-8")) > 123:
            raise LocalProtocolError("close reason is longer than 123 bytes of UTF-8")
        self._link.request_close(code, reason)

    def abort(self) -> None:
        """Drop the connection without a close handshake (reported as 1006)."""
        self._link.kill()

    def wait_closed(self, timeout: float | None = None) -> CloseResult:
        """Wait until the connection ends (flow complete, closed or lost) and return
        how it ended. Raises TimeoutError after `timeout` seconds."""
        link = self._link
        if not link.wait_ended(timeout):
            raise TimeoutError(f"the connection is still open after {timeout} s")
        if link is not threading.current_thread():
            link.join()
        assert link.result is not None
        return link.result

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        link = self._link
        if not link.ended:
            if exc_type is None:
                self.close(1000, "")
            else:
                self.close(1011, "client error")
        if link is threading.current_thread():
            return  # leaving the block from one of this connection's own handlers
        if not link.wait_ended(link.grace + 1.0):
            link.kill()
        link.join()


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
) -> ClientConnection:
    """Connect to `url` (ws:// or wss://) and run `flow` on a background thread.

    `reconnect=True`: on a lost transport the connection's thread reconnects
    (exponential backoff with jitter: `socker_core.reconnect_delay`) and resumes
    the session at its step; `wait_closed()` returns when the session ends.

    Returns once the opening handshake succeeded. A rejected or failed handshake
    raises `HandshakeError` (its `.result` carries the HTTP status); failing to reach
    the server (refused, DNS, TLS, `open_timeout`) raises the `OSError` (or
    `ssl.SSLError`) unchanged. `wss://` uses `ssl` (default: a verifying
    `ssl.create_default_context()`). `options` are the `wire.Options` fields.
    With `unix_socket=` the client connects to that unix-domain socket; the URL
    still gives the Host header and the path (`ws://localhost/game`).
    """
    opts = Options(**options)
    flow.validate()
    where = ClientTarget.parse(url)
    secure, host, port, host_header, target = (
        where.secure,
        where.host,
        where.port,
        where.host_header,
        where.path,
    )
    if ssl is not None and not secure:
        raise ValueError("ssl= needs a wss:// URL")
    if unix_socket is not None and secure:
        raise ValueError("unix_socket= serves ws:// only (TLS over a unix socket is not offered)")
    tls = (ssl or ssl_module.create_default_context()) if secure else None
    timeout = opts.open_timeout
    peer = f"unix:{unix_socket}" if unix_socket is not None else f"{format_host(host)}:{port}"

    def dial() -> socket.socket:
        started = monotonic()
        if unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(unix_socket)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if is_tcp(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                if timeout is not None:
                    sock.settimeout(max(0.001, started + timeout - monotonic()))
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def make_wire(sock: socket.socket, started: float, resume_from: Wire | None) -> Wire:
        wire = Wire.client(
            flow,
            host_header,
            started,
            opts,
            path=target,
            origin=origin,
            headers=headers,
            peer=peer,
            on_event=on_event,
            logger=logger,
            reconnect=reconnect,
            resume_from=resume_from,
        )
        wire.remote_address = socket_address(sock.getpeername())
        return wire

    def redial(holder: Wire) -> tuple[socket.socket, Wire] | None:
        started = monotonic()
        try:
            sock = dial()
        except OSError as exc:
            (logger or _SOCKER_LOGGER).info("socker: client %s: reconnect failed: %s", peer, exc)
            return None
        return sock, make_wire(sock, started, holder)

    started = monotonic()
    sock = dial()
    try:
        wire = make_wire(sock, started, None)
        link = _Link(
            sock,
            wire,
            _AsyncRunner(f"socker-client-{peer}"),
            name=f"socker-client-{peer}",
            own_runner=True,
            waitable=True,
            redial=redial if reconnect else None,
        )
    except BaseException:
        sock.close()
        raise
    link.start()
    try:
        link.wait_opened()
        if wire.handshake_status != 101:
            link.wait_ended()
            link.join()
            assert link.result is not None
            raise HandshakeError(link.result)
    except HandshakeError:
        raise
    except BaseException:  # Ctrl-C while waiting
        link.kill()
        link.join()
        raise
    return ClientConnection(link)


def run_client(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    **options: Unpack[OptionsDict],
) -> CloseResult:
    """Connect to `url`, run `flow` to its end and return how the connection ended.

    Keywords are those of `connect`. A rejected handshake is a result
    (`handshake_status` is the HTTP status), not an error; an unreachable server
    raises OSError.
    """
    try:
        client = connect(url, flow, ssl=ssl, origin=origin, headers=headers, **options)
    except HandshakeError as exc:
        return exc.result
    with client:
        return client.wait_closed()
