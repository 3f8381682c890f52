"""A threaded link as other threads see it: the requests they post (send, close,
a broadcast's prebuilt frame, kill), the waits of a client, the mail its own thread
acts on (among it the async handlers that settled), and the registry of live links
behind `send_threadsafe`. The link's own thread (its socket loop) is `_Link` in
_threaded_link.py, built on `_LinkMail`, which declares the slots of both."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import socket
import ssl as ssl_module
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from socker_core import (
    HOOK_STEPS,
    Await,
    CancelAwait,
    Connection,
    ConnectionClosedError,
    RoomRef,
)

from ._threaded_runner import _AsyncRunner, _discard
from ._threaded_wake import _CLOSE, _FRAME, _RESUME, _SEND, _Waker
from .wire import (
    AwaitHandshake,
    CloseResult,
    HandshakeFailed,
    Opened,
    Phase,
    Wire,
    WireEvent,
)

if TYPE_CHECKING:
    from ._threaded_link import _Link

_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_HOOK_TOKEN = -1  # the resume queue's key for an awaited handshake hook


class _LinkMail(threading.Thread):
    """The slots of a link (set in `_Link.__init__`) and what other threads do to it."""

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

    sock: socket.socket
    wire: Wire
    lock: threading.RLock
    waker: _Waker
    ended: bool
    result: CloseResult | None
    _opened: threading.Event | None
    _done: threading.Event | None
    _runner: _AsyncRunner
    _own_runner: bool
    _tls: ssl_module.SSLContext | None
    _on_done: Callable[[_Link], None] | None
    _pending: dict[int, concurrent.futures.Future[object]] | None
    _kill: bool
    _read_wants_write: bool
    _write_wants_read: bool
    _direct: bool
    _writing: bool
    _carry: memoryview | None
    _big_read: memoryview | None
    _redial: Callable[[Wire], tuple[socket.socket, Wire] | None] | None
    _holder: Wire | None
    reconnects: int
    grace: float

    @property
    def session_wire(self) -> Wire:
        """The wire holding the flow: the current one, or (during a reconnect
        attempt before its 101) the detached one."""
        wire = self.wire
        if wire.stepper is None and self._holder is not None:
            return self._holder
        return wire

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


#: Each live connection's link, for `send_threadsafe` (entries leave in `_Link._finish`).
_links_by_conn: dict[Connection, _LinkMail] = {}
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
