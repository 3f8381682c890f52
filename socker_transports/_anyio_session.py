"""The trio connection behind `socker_transports.anyio`: `_StreamSession`.

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
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from socker_core import RoomRef

from ._anyio_raw_io import READ_SIZE, STREAM_ERRORS, RawIO, shared_read_buffer
from ._anyio_session_base import Spawn, _SessionBase
from .wire import (
    MAX_IOV,
    SEND_BUFFER_OVERFLOW,
    CloseResult,
    Wire,
    unsent_part,
)

logger = logging.getLogger("socker")

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


#: What `_StreamSession._step` asks of the loop.
_GO, _CLOSE, _BACKOFF = 0, 1, 2


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
