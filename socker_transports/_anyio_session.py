"""The connection machinery behind `socker_transports.anyio`.

`_SessionBase` is what every connection shares, whatever moves its bytes: it
owns one `Wire`, turns the wire's events into work (awaited handlers, hooks and
on_close hooks run as tasks spawned into the owner's task group: the server's or
the client's, never fire-and-forget) and reports when the connection is over
(transport closed *and* every task it spawned finished).

`_StreamSession` drives a connection on the trio backend (the asyncio backend
uses `_asyncio_protocol._ProtocolSession`): one task per connection reads, keeps
time and writes.

- It waits inside one cancel scope whose deadline follows `wire.next_deadline`
  (reset in place as it moves), for the next read while `wire.wants_data`, else
  for a wakeup; a deadline or a wakeup (an application send, an awaited handler
  finishing) cancels the scope, and the loop ticks or collects. Waits are
  cancel-safe, so nothing is lost.
- A plain TCP socket on trio is used directly: trio's `wait_readable`, then a
  non-blocking `recv` / `send` (a trio server without TLS accepts bare sockets:
  no stream objects at all). What a full socket buffer did not take is kept, and
  a second task (the flusher) exists only while such a write waits for the socket
  to be writable, so neither reads nor timers stop behind a slow peer (two peers
  writing to each other must not deadlock).
- Any other stream (TLS) is read with `receive` (cancel-safe) and gets one
  writer task.
- Fairness: the wire handles at most `Options.frames_per_turn` frames per call;
  while it holds more (`wire.input_pending`) the task checkpoints (lets every other
  task run) before each further turn, and reads nothing new meanwhile.
- Closing a plain socket: when the wire asks to linger (`wire.linger`), shut down
  the write side and read and discard until the peer's EOF, bounded in time and
  bytes, so our last bytes (an HTTP error, a close frame) are read instead of
  being destroyed by the reset that closing with unread input sends.

Every wire call happens on the event loop thread, between awaits, so the wire
needs no lock.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from socker_core import HOOK_STEPS as _HOOK_STEPS
from socker_core import Await, CancelAwait, Connection, RoomRef

from ._blocking import run_blocking_in_thread
from .wire import (
    MAX_IOV,
    SEND_BUFFER_OVERFLOW,
    AwaitHandshake,
    CloseResult,
    Detached,
    HandshakeFailed,
    Opened,
    Phase,
    Wire,
    unsent_part,
)

logger = logging.getLogger("socker")

#: Bytes asked for per read of a stream (TLS): one read carries many small
#: messages, and 64 KiB stays under glibc's mmap threshold (a `recv` of 256 KiB
#: costs an mmap, an mremap and a munmap however little arrives).
READ_SIZE = 64 * 1024

#: Bytes per read of a bare socket (or asyncio's buffered protocol): read into a
#: buffer of this size allocated once per thread, handed to the wire as a view
#: (the wire copies out what it keeps before the next read).
BIG_READ_SIZE = 256 * 1024

#: A bare-socket read at least this big suggests more is already waiting: the
#: next read is tried before waiting, at most _EAGER_STREAK times in a row.
_EAGER_READ = 16 * 1024
_EAGER_STREAK = 16

#: After a read that found nothing more waiting, the next one is tried once every
#: other ready task has had its turn (one checkpoint), before waiting: with many
#: busy connections the next message has usually arrived by then, and a read
#: that needs no wait saves an epoll registration and a wakeup. After a miss (one
#: quiet connection: its peer has not answered yet) the reads wait first for this
#: many turns before trying again.
_AFTER_MISS = 8

_local = threading.local()


def shared_read_buffer() -> memoryview:
    """This thread's BIG_READ_SIZE buffer. Safe to share between all the
    connections of an event loop (one thread): every read copies out what it got
    at once."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(BIG_READ_SIZE))
    return buffer


#: Errors a byte stream raises when the transport fails under us.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

#: Bound (seconds) for the last write and for on_close hooks when close_timeout is None.
_FALLBACK_LINGER = 10.0

#: What `_StreamSession._step` asks of the loop.
_GO, _CLOSE, _BACKOFF = 0, 1, 2

#: Starts a task in the owner's task group (`TaskGroup.start_soon`).
Spawn = Callable[..., Any]


class _Pending:
    """An awaited handler or hook: its cancel scope, and whether it started.

    The scope is made by the task itself: anyio cannot tell its backend from an
    asyncio protocol callback (no current task) under a plain `asyncio.run`."""

    __slots__ = ("awaitable", "cancelled", "scope", "started")

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable
        self.scope: anyio.CancelScope | None = None
        self.started = False
        self.cancelled = False

    def begin(self) -> anyio.CancelScope:
        """In the task: mark started, and make the scope `cancel()` cancels."""
        self.started = True
        self.scope = scope = anyio.CancelScope()
        return scope

    def cancel(self) -> None:
        """Cancel the awaitable: before it started (closed, never run) or while it runs."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()
        self.discard()

    def discard(self) -> None:
        """Close a coroutine that never ran (no 'never awaited' warning)."""
        if not self.started:
            self.started = True
            close = getattr(self.awaitable, "close", None)
            if close is not None:
                close()


class _SessionBase:
    """One connection's wire and the tasks it spawned. Subclasses move the bytes:
    they implement `_now`, `_after` (act on the wire after a call made outside the
    I/O path), `_wakeup` and `abort`, and set `_ended` then call `_maybe_done()`
    once the transport is closed."""

    __slots__ = (
        "_ended",
        "_finished",
        "_hook",
        "_hook_bound",
        "_linger",
        "_on_detached",
        "_on_done",
        "_on_open",
        "_pending",
        "_spawn",
        "_tasks",
        "done",
        "opened",
        "wire",
    )

    def __init__(
        self,
        wire: Wire,
        spawn: Spawn,
        *,
        on_open: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        opened: anyio.Event | None = None,
        done: anyio.Event | None = None,
        on_detached: Callable[[Any], None] | None = None,
    ) -> None:
        self.wire = wire
        self._spawn = spawn
        self._on_open = on_open
        self._on_done = on_done
        #: Called when the transport was lost and the session detached (resume).
        self._on_detached = on_detached
        #: Set once the handshake succeeded or failed (or the connection ended).
        self.opened = opened
        #: Set once the transport is closed and every spawned task has ended.
        self.done = done
        timeout = wire.options.close_timeout
        self._linger = _FALLBACK_LINGER if timeout is None else timeout
        self._hook_bound = timeout
        self._pending: dict[int, _Pending] | None = None
        self._hook: _Pending | None = None
        self._tasks = 0
        self._ended = False
        self._finished = False
        wire.wakeup = self._wakeup
        wire.run_blocking = run_blocking_in_thread  # blocking=True steps: a worker thread

    # -- what subclasses provide ------------------------------------------------

    def _now(self) -> float:
        raise NotImplementedError

    def _after(self, now: float) -> None:
        raise NotImplementedError

    def _wakeup(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now (a server giving up after close_timeout)."""
        raise NotImplementedError

    def push_frame(
        self, frame: bytes, data: bytes, now: float, origin: RoomRef | None = None
    ) -> bool:
        """Queue one prebuilt broadcast frame (`Wire.send_frame`) and start writing
        it now, without a task switch; False when the connection was skipped."""
        raise NotImplementedError

    # -- public ----------------------------------------------------------------

    @property
    def conn(self) -> Connection | None:
        stepper = self.wire.stepper
        return None if stepper is None else stepper.conn

    @property
    def result(self) -> CloseResult:
        return self.wire.result

    def send(self, data: bytes) -> None:
        """Application send from a task on this loop (not from a handler)."""
        now = self._now()
        self.wire.send(data, now)
        self._after(now)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing (a no-op once the transport is done)."""
        now = self._now()
        self.wire.close(code, reason, now)
        self._after(now)

    # -- events ----------------------------------------------------------------

    def _dispatch(self) -> None:
        for event in self.wire.events():
            kind = type(event)
            if kind is Await:
                assert isinstance(event, Await)
                self._start_await(event)
            elif kind is CancelAwait:
                assert isinstance(event, CancelAwait)
                entry = None if self._pending is None else self._pending.get(event.token)
                if entry is not None:
                    entry.cancel()
            elif kind is AwaitHandshake:
                assert isinstance(event, AwaitHandshake)
                self._start_hook(event)
            elif kind is Opened:
                if self.opened is not None:
                    self.opened.set()
                if self._on_open is not None:
                    self._on_open(self)
            elif kind is HandshakeFailed and self.opened is not None:
                self.opened.set()
            elif kind is Detached and self._on_detached is not None:
                self._on_detached(self)

    def _maybe_done(self) -> None:
        if self._ended and not self._tasks and not self._finished:
            self._finished = True
            if self.opened is not None:
                self.opened.set()
            if self.done is not None:
                self.done.set()
            if self._on_done is not None:
                self._on_done(self)

    # -- spawned tasks ---------------------------------------------------------

    def _start(self, entry: _Pending, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._tasks += 1
        try:
            self._spawn(func, entry, *args)
        except Exception:
            # The owner's task group is gone (the connection outlived it).
            self._tasks -= 1
            self.wire.log.debug("%s: dropping an awaitable: no task group", self.wire.peer)
            entry.discard()

    def _task_done(self) -> None:
        self._tasks -= 1
        self._maybe_done()

    def _driver_error(self) -> None:
        self.wire.log.exception("%s: driver error", self.wire.peer)
        self.abort()

    def _start_await(self, event: Await) -> None:
        entry = _Pending(event.awaitable)
        if event.step in _HOOK_STEPS:
            self._start(entry, self._run_close_hook, event.step)
            return
        if self._pending is None:
            self._pending = {}
        self._pending[event.token] = entry
        self._start(entry, self._run_await, event.token)

    async def _run_await(self, entry: _Pending, token: int) -> None:
        try:
            if entry.started:  # discarded before it ran
                return
            result: object = None
            error: Exception | None = None
            with entry.begin():
                try:
                    result = await entry.awaitable
                except Exception as exc:
                    error = exc
            if entry.cancelled or (self._ended and not self.wire.handed_off):
                return  # (a resumed session's result goes on: to its new wire)
            try:
                now = self._now()
                wire = self.wire
                wire.collect(now)  # what the handler sent goes out before what follows it
                if error is not None:
                    wire.resume_error(token, error, now)
                else:
                    wire.resume(token, result, now)
                self._after(now)
            except Exception:
                self._driver_error()
        finally:
            if self._pending is not None:
                self._pending.pop(token, None)
            self._task_done()

    async def _run_close_hook(self, entry: _Pending, step: str) -> None:
        try:
            entry.started = True
            bound = self._hook_bound
            with anyio.move_on_after(math.inf if bound is None else bound) as scope:
                await entry.awaitable
            if scope.cancelled_caught:
                self.wire.log.warning(
                    "%s: on_close hook cancelled after %ss", self.wire.peer, bound
                )
        except Exception:
            self.wire.log.exception("%s: %s hook raised", self.wire.peer, step)
        finally:
            self._task_done()

    def _start_hook(self, event: AwaitHandshake) -> None:
        entry = _Pending(event.awaitable)
        self._hook = entry
        self._start(entry, self._run_hook)

    async def _run_hook(self, entry: _Pending) -> None:
        try:
            if entry.started:
                return
            result: object
            try:
                with entry.begin():
                    try:
                        result = await entry.awaitable
                    except Exception as exc:
                        result = exc
            finally:
                self._hook = None
            if entry.cancelled or self._ended:
                return
            wire = self.wire
            if wire.phase is Phase.HOOK:  # not timed out or closed meanwhile
                try:
                    now = self._now()
                    wire.finish_handshake(result, now)
                    self._after(now)
                except Exception:
                    self._driver_error()
        finally:
            self._task_done()

    def _cancel_pending(self) -> None:
        if self.wire.handed_off:
            return  # they finish, and their results reach the session's new wire
        if self._pending:
            for entry in list(self._pending.values()):
                entry.cancel()
            self._pending.clear()
        if self._hook is not None:
            self._hook.cancel()


class RawIO(NamedTuple):
    """The backend's own primitives for a plain socket (trio's), used instead of
    anyio's stream wrappers on the hot path."""

    wait_readable: Callable[[socket.socket], Awaitable[None]]
    wait_writable: Callable[[socket.socket], Awaitable[None]]
    cancel_scope: Callable[..., Any]  # (deadline=...) -> a scope with .cancel()
    current_time: Callable[[], float]
    close: Callable[[socket.socket], None]  # close a socket others may wait on
    checkpoint: Callable[[], Awaitable[None]]  # let every other task run


def trio_raw_io() -> RawIO | None:
    """trio's primitives when trio is the running backend, else None."""
    try:
        import sniffio
        import trio
    except ImportError:  # pragma: no cover
        return None
    try:
        if sniffio.current_async_library() != "trio":
            return None
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover
        return None

    def close(sock: socket.socket) -> None:
        trio.lowlevel.notify_closing(sock)
        sock.close()

    return RawIO(
        trio.lowlevel.wait_readable,
        trio.lowlevel.wait_writable,
        trio.CancelScope,
        trio.current_time,
        close,
        trio.lowlevel.checkpoint,
    )


class _StreamSession(_SessionBase):
    """A connection over an anyio byte stream, or over a bare socket (`stream`
    None: a trio server without TLS accepts sockets itself), driven by `run()` (see
    the module docstring). Used on trio; works on any anyio backend."""

    __slots__ = (
        "_broken",
        "_checkpoint",
        "_clock",
        "_closing",
        "_dirty",
        "_flush_done",
        "_flush_scope",
        "_io",
        "_scope",
        "_scope_factory",
        "_sock",
        "_stream_closed",
        "_unsent",
        "_waiting_idle",
        "_writer_done",
        "_writer_scope",
        "_writer_wake",
        "stream",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream | None,
        wire: Wire,
        spawn: Spawn,
        *,
        sock: socket.socket | None = None,
        raw_io: RawIO | None = None,
        on_open: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        opened: anyio.Event | None = None,
        done: anyio.Event | None = None,
        on_detached: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(
            wire,
            spawn,
            on_open=on_open,
            on_done=on_done,
            opened=opened,
            done=done,
            on_detached=on_detached,
        )
        self.stream = stream
        self._stream_closed = False
        self._sock = sock if raw_io is not None else None  # plain TCP on trio: used directly
        self._io = raw_io
        self._clock: Callable[[], float] = anyio.current_time
        self._scope_factory: Callable[..., Any] = anyio.CancelScope
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        if raw_io is not None:
            self._clock = raw_io.current_time
            self._scope_factory = raw_io.cancel_scope
            self._checkpoint = raw_io.checkpoint
        self._scope: Any = None  # the cancel scope run() waits in
        self._dirty = False  # the flow has events for collect()
        self._unsent: list[bytes | bytearray | memoryview] | None = None
        self._broken = False
        self._closing = False
        self._writer_scope: anyio.CancelScope | None = None
        self._writer_done: anyio.Event | None = None
        self._writer_wake: anyio.Event | None = None
        self._waiting_idle = False  # run() waits for a wakeup only (not reading)
        self._flush_scope: Any = None  # set while the flusher task runs
        self._flush_done: anyio.Event | None = None

    def _now(self) -> float:
        return self._clock()

    def _poke(self) -> None:
        scope = self._scope
        if scope is not None:
            scope.cancel()

    def _wakeup(self) -> None:
        # The flow produced events outside a wire call (an async handler or
        # application code sent or closed): run() collects them.
        self._dirty = True
        self._poke()

    def _after(self, now: float) -> None:
        self._dispatch()
        self._poke()

    def push_frame(
        self, frame: bytes, data: bytes, now: float, origin: RoomRef | None = None
    ) -> bool:
        # Written here, by the broadcasting task: a non-blocking send on a bare socket
        # (the flusher task starts only if the socket is full), or the TLS writer's
        # Event. No cancel of run()'s scope, no task switch per recipient.
        if self._closing:
            return False
        wire = self.wire
        if not wire.send_frame(frame, data, now, origin):
            if wire.should_close_transport:
                self._poke()  # dropped (max_send_buffer): run() closes it
            return False
        if self._sock is not None:
            if self._flush_done is None and not self._send_raw(now):
                self._start_flusher()
            if wire.should_close_transport:
                self._poke()  # the write failed: run() ends the connection
        elif self._writer_wake is not None:
            self._writer_wake.set()
        return True

    def abort(self) -> None:
        """Nothing to do here: run() is a task in the owner's task group, and
        cancelling that group ends it (its `finally` aborts the wire)."""

    # -- the connection task ---------------------------------------------------

    async def run(self) -> CloseResult:
        """Drive the connection to its end and close the stream. Never raises for
        anything the peer does."""
        wire = self.wire
        try:
            if self._sock is None:
                self._writer_scope = anyio.CancelScope()
                self._writer_done = anyio.Event()
                self._tasks += 1
                self._spawn(self._writer)
            await self._serve()
            await self._finish()
            if wire.detached:
                await self._keep_detached()
        except Exception:
            wire.log.exception("%s: driver error", wire.peer)
        finally:
            self._scope = None
            self._closing = True
            if not wire.should_close_transport or wire.detached:
                # Cancelled from outside (server abort, client cancelled) or a bug.
                wire.abort(self._clock(), "connection task cancelled", keep_session=False)
            self._dispatch()
            wire.data_to_send()  # nothing more can be written
            self._cancel_pending()
            if self._writer_scope is not None:
                self._writer_scope.cancel()
            if self._writer_wake is not None:
                self._writer_wake.set()
            if self._flush_scope is not None:
                self._flush_scope.cancel()
            if not self._stream_closed:
                self._stream_closed = True
                if self.stream is not None:
                    await anyio.aclose_forcefully(self.stream)
                elif self._sock is not None and self._io is not None:
                    self._io.close(self._sock)
            self._ended = True
            self._maybe_done()
        return wire.result

    async def _keep_detached(self) -> None:
        """The socket is closed but the wire holds a detached session: tick it and
        collect what it does until it resumes elsewhere or ends."""
        wire = self.wire
        clock = self._clock
        while True:
            now = clock()
            if self._dirty:
                self._dirty = False
                wire.collect(now)
            deadline = wire.next_deadline
            if deadline is not None and now >= deadline:
                wire.tick(now)
            self._dispatch()
            wire.data_to_send()  # nothing can be written
            if wire.finished:
                return
            deadline = wire.next_deadline
            with self._scope_factory(deadline=math.inf if deadline is None else deadline) as scope:
                self._scope = scope
                try:
                    if not self._dirty:
                        await anyio.sleep_forever()
                finally:
                    self._scope = None

    def _step(self, now: float) -> int:
        """Everything but waiting: collect, tick, dispatch, write. Returns _GO, or
        _CLOSE once the transport should close, or _BACKOFF (a stuck deadline)."""
        wire = self.wire
        if self._dirty:
            self._dirty = False
            wire.collect(now)
        deadline = wire.next_deadline
        if deadline is not None and now >= deadline:
            wire.tick(now)
            if wire.next_deadline == deadline and not wire.should_close_transport:
                # A deadline that tick() did not consume would spin: back off.
                wire.log.warning("%s: deadline %s not consumed by tick", wire.peer, deadline)
                return _BACKOFF
        self._dispatch()
        if wire.input_pending:
            pass  # the output waits for the last turn (or write_limit): one write per read
        elif self._sock is not None:
            if self._flush_done is None and not self._send_raw(now):
                self._start_flusher()
        elif wire.buffered_amount and self._writer_wake is not None:
            self._writer_wake.set()
        if wire.should_close_transport:
            return _CLOSE
        return _GO

    async def _serve(self) -> None:
        """Until the transport should close. One cancel scope serves many reads: its
        deadline follows `wire.next_deadline`; a wakeup cancels it."""
        wire = self.wire
        stream = self.stream
        sock = self._sock
        io = self._io
        clock = self._clock
        new_scope = self._scope_factory
        checkpoint = self._checkpoint
        buffer = shared_read_buffer()
        big = False  # reads of at least _EAGER_READ: a big message is arriving
        data: bytes | memoryview = b""
        # Read before waiting: a new server connection's request has usually
        # arrived by the time this task runs, and while a big read follows a big
        # read more is likely there. Otherwise yield once and read (_AFTER_MISS),
        # and never more than _EAGER_STREAK reads in a row without a wait.
        eager = sock is not None and not wire.buffered_amount
        streak = 0
        quiet = 0  # reads left that wait first (see _AFTER_MISS)
        while True:
            status = self._step(clock())
            if status == _CLOSE:
                return
            if status == _BACKOFF:
                await anyio.sleep(0.01)
                continue
            deadline = wire.next_deadline
            with new_scope(deadline=math.inf if deadline is None else deadline) as scope:
                self._scope = scope
                try:
                    while not self._dirty:
                        if wire.input_pending:
                            # The wire stopped at its per-turn budget: let every
                            # other task run, then take the next turn.
                            await checkpoint()
                            now = clock()
                            wire.receive_pending(now)
                            if self._step(now) != _GO:
                                break
                            new_deadline = wire.next_deadline
                            if new_deadline != deadline:
                                deadline = new_deadline
                                scope.deadline = math.inf if deadline is None else deadline
                            continue
                        if not wire.wants_data:
                            self._waiting_idle = True
                            await anyio.sleep_forever()
                        if sock is not None:
                            assert io is not None
                            # Every read goes into the shared buffer and reaches
                            # the wire as a view (the wire copies what it keeps:
                            # payloads straight into their messages), so a read
                            # allocates nothing, however big.
                            chunk = None
                            probing = not eager and not quiet and streak < _EAGER_STREAK
                            if probing:
                                await checkpoint()
                                eager = True
                            if eager:
                                streak += 1
                                try:
                                    chunk = buffer[: sock.recv_into(buffer)]
                                except (BlockingIOError, InterruptedError):
                                    if probing:
                                        quiet = _AFTER_MISS
                                except OSError as exc:
                                    wire.abort(clock(), f"read failed: {exc!r}")
                                    break
                            if chunk is None:
                                streak = 0
                                if quiet:
                                    quiet -= 1
                                await io.wait_readable(sock)
                                try:
                                    chunk = buffer[: sock.recv_into(buffer)]
                                except (BlockingIOError, InterruptedError):
                                    continue  # not readable after all
                                except OSError as exc:
                                    wire.abort(clock(), f"read failed: {exc!r}")
                                    break
                            data = chunk
                            got = len(data)
                            big = got >= _EAGER_READ
                            eager = big and streak < _EAGER_STREAK
                        else:
                            assert stream is not None
                            try:
                                data = await stream.receive(READ_SIZE)
                            except anyio.EndOfStream:
                                data = b""
                            except STREAM_ERRORS as exc:
                                wire.abort(clock(), f"read failed: {exc!r}")
                                break
                        now = clock()
                        wire.receive_data(data, now)
                        data = b""  # (a view of the shared buffer: not kept)
                        if self._step(now) != _GO:
                            break
                        new_deadline = wire.next_deadline
                        if new_deadline != deadline:
                            deadline = new_deadline
                            scope.deadline = math.inf if deadline is None else deadline
                finally:
                    self._scope = None
                    self._waiting_idle = False

    def _start_flusher(self) -> None:
        """A write would block: a second task waits for the socket to be writable,
        while run() keeps reading (a peer may be blocked writing to us too) and
        keeping time. It ends once everything is written."""
        self._flush_done = anyio.Event()
        self._tasks += 1
        self._spawn(self._flusher)

    async def _flusher(self) -> None:
        io = self._io
        sock = self._sock
        assert io is not None and sock is not None
        try:
            with self._scope_factory() as scope:
                self._flush_scope = scope
                while not self._send_raw(self._clock()):
                    await io.wait_writable(sock)
        except Exception as exc:  # the socket was closed under the wait
            self._broken = True
            self._unsent = None
            self.wire.abort(self._clock(), f"write failed: {exc!r}")
        finally:
            self._flush_scope = None
            done = self._flush_done
            self._flush_done = None
            if done is not None:
                done.set()
            self._poke()  # the wire may want data again, or be over (write failed)
            self._task_done()

    def _send_raw(self, now: float) -> bool:
        """Write what the wire has without blocking; False if some must wait until
        the socket is writable (kept in `_unsent`, so cancelling the wait is safe)."""
        chunks = self._unsent
        if chunks is None:
            chunks = self.wire.chunks_to_send()
            if not chunks:
                return True
        sock = self._sock
        assert sock is not None
        while True:
            try:
                # One vectored write: a big payload goes from its own buffer.
                sent = sock.sendmsg(chunks[:MAX_IOV]) if len(chunks) > 1 else sock.send(chunks[0])
            except (BlockingIOError, InterruptedError):
                self._unsent = chunks
                return False
            except OSError as exc:
                self._unsent = None
                self._broken = True
                self.wire.abort(now, f"write failed: {exc!r}")
                self.wire.data_to_send()
                return True
            chunks = unsent_part(chunks, sent)
            if chunks:
                continue
            chunks = self.wire.chunks_to_send()
            if not chunks:
                self._unsent = None
                return True

    async def _writer(self) -> None:
        """Writes for streams that are not plain sockets (TLS): a blocked write
        must not stop the connection task's reads and timers."""
        wire = self.wire
        scope = self._writer_scope
        assert scope is not None
        try:
            with scope:
                while True:
                    data = wire.data_to_send()
                    if not data:
                        if self._closing:
                            return
                        event = self._writer_wake = anyio.Event()
                        await event.wait()
                        continue
                    if self._waiting_idle and wire.wants_data:
                        self._poke()  # taking the wire's output lets run() read again
                    assert self.stream is not None
                    try:
                        await self.stream.send(data if type(data) is bytes else bytes(data))
                    except STREAM_ERRORS as exc:
                        self._broken = True
                        wire.abort(self._clock(), f"write failed: {exc!r}")
                        wire.data_to_send()
                        self._after(0.0)
                        return
        finally:
            self._writer_wake = None
            assert self._writer_done is not None
            self._writer_done.set()
            self._task_done()

    async def _linger_raw(self, sock: socket.socket, seconds: float, limit: int) -> None:
        """Half-close, then read and discard until the peer's EOF, at most `seconds`
        and `limit` bytes."""
        io = self._io
        assert io is not None
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with anyio.move_on_after(seconds):
            while limit >= 0:
                await io.wait_readable(sock)
                try:
                    got = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not got:
                    return
                limit -= len(got)

    async def _linger_stream(self, seconds: float, limit: int) -> None:
        """`_linger_raw` for a stream (TLS): half-close the TCP stream under the TLS
        one (anyio has no TLS half-close, and socker's TLS closes without
        close_notify: a bare EOF ends it), then read and discard until the peer's
        EOF, at most `seconds` and `limit` bytes."""
        stream = self.stream
        assert stream is not None
        under = stream.transport_stream if isinstance(stream, TLSStream) else stream
        with anyio.move_on_after(seconds):
            try:
                await under.send_eof()
                while limit >= 0:
                    limit -= len(await stream.receive(READ_SIZE))
            except (anyio.EndOfStream, NotImplementedError, *STREAM_ERRORS):
                return

    async def _finish(self) -> None:
        """The wire is done: write what is left (bounded), then close the stream."""
        self._closing = True
        if self.wire.close_code == SEND_BUFFER_OVERFLOW:
            self._broken = True  # the peer reads nothing: flushing to it is pointless
            self._unsent = None
        sock = self._sock
        if sock is not None:
            if not self._broken and (
                self._flush_done is not None or not self._send_raw(self._clock())
            ):
                assert self._io is not None
                with anyio.move_on_after(self._linger):
                    if self._flush_done is not None:
                        await self._flush_done.wait()  # the flusher writes it all
                    while not self._broken and not self._send_raw(self._clock()):
                        await self._io.wait_writable(sock)
            if self._flush_scope is not None:
                self._flush_scope.cancel()
            linger = self.wire.linger
            if linger is not None and not self._broken and self._unsent is None:
                await self._linger_raw(sock, *linger)
            # A plain socket closes now (the kernel sends what it holds).
            self._stream_closed = True
            if self.stream is None:
                assert self._io is not None
                self._io.close(sock)
            else:
                await self.stream.aclose()
            return
        if self._writer_done is not None and not self._broken:
            with anyio.move_on_after(self._linger):
                # The writer drains the wire, then ends (it sees _closing).
                if self._writer_wake is not None:
                    self._writer_wake.set()
                await self._writer_done.wait()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        linger = self.wire.linger
        if linger is not None and not self._broken:
            await self._linger_stream(*linger)
        self._stream_closed = True
        assert self.stream is not None
        try:
            with anyio.move_on_after(self._linger):
                await self.stream.aclose()
        except STREAM_ERRORS:
            pass
