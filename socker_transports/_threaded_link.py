"""One connection of the threaded driver: its socket, its Wire and the thread that
drives them (`_Link`); what other threads post to it, and `send_threadsafe`, are in
_threaded_link_mail.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import socket
import ssl as ssl_module
import threading
from collections.abc import Callable
from time import monotonic, sleep

from socker_core import reconnect_delay

from ._threaded_link_mail import _WOULD_BLOCK as _WOULD_BLOCK
from ._threaded_link_mail import _LinkMail
from ._threaded_link_mail import _links_by_conn as _links_by_conn
from ._threaded_link_mail import _links_lock as _links_lock
from ._threaded_link_mail import send_threadsafe as send_threadsafe
from ._threaded_runner import _AsyncRunner
from ._threaded_wake import _wait, _Waker
from .wire import (
    MAX_IOV,
    CloseResult,
    Wire,
    unsent_part,
)

#: Bytes asked for per `recv`.
RECV_SIZE = 64 * 1024

#: A connection whose read filled RECV_SIZE carries big messages: from then on it
#: reads into a buffer of this size of its own (allocated then, once), handed to
#: the wire as a view: no allocation per read, and a 64 KiB message in one read.
BIG_RECV_SIZE = 256 * 1024

#: How long the final flush of a finished connection (an HTTP error response, the
#: last close frame) and the shutdown of a server wait when `close_timeout` is None.
FALLBACK_TIMEOUT = 10.0

#: While a connection works through pending input (frames_per_turn), it lets the
#: other threads take the GIL this often (seconds).
_GIL_YIELD = 0.001


class _Link(_LinkMail):
    """A socket, its Wire and the thread that drives them (the link is that thread:
    one object less per connection, and `run` starts one C call level shallower,
    which keeps the thread's stack to fewer touched pages)."""

    __slots__ = ()  # declared by _LinkMail (_threaded_link_mail.py)

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

    # -- the thread ----------------------------------------------------------

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
                    if linger is not None:
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
        unread input sends. A `kill` ends it at once. (On a TLS socket `shutdown`
        leaves TLS: what follows is read as raw bytes, which is all discarding
        needs; socker's TLS closes without close_notify, so a bare EOF ends it.)"""
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
