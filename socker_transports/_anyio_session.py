"""One websocket connection driven by anyio: a thin loop around `Wire`.

Internal to `socker_transports.anyio`. A `_Session` owns one byte stream and one
`Wire` and runs, inside its own task groups:

- a reader task: reads big chunks while `wire.wants_data` (backpressure otherwise),
  feeds them to the wire and writes the answers at once (inline flush);
- a writer task: writes what the wire produced outside the reader (timers, async
  handlers, application sends) so a blocked write never stops the timers;
- the ticker (the session's own task): sleeps until `wire.next_deadline` or a
  wakeup, calls `tick` / `collect`, and ends the connection once the wire says so;
- one task per pending async handler or hook (`Await`, `AwaitHandshake`).

Every wire call happens on the event loop thread, between awaits, so the wire
needs no lock; writes are serialized by the `_writing` flag (whoever holds it
drains everything, in order).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from socker_core import ON_CLOSE as _ON_CLOSE
from socker_core import Await, CancelAwait, Connection

from .wire import AwaitHandshake, CloseResult, HandshakeFailed, Opened, Phase, Wire

logger = logging.getLogger("socker")

#: Bytes asked for per read: large, so one read can carry many small messages.
READ_SIZE = 256 * 1024

#: Errors a byte stream raises when the transport fails under us.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

#: Bound (seconds) for the last write and for on_close hooks when close_timeout is None.
_FALLBACK_LINGER = 10.0


class _Pending:
    """An awaited handler or hook: its cancel scope, and whether it started."""

    __slots__ = ("awaitable", "scope", "started")

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable
        self.scope = anyio.CancelScope()
        self.started = False

    def discard(self) -> None:
        """Close a coroutine that never ran (no 'never awaited' warning)."""
        if not self.started:
            self.started = True
            close = getattr(self.awaitable, "close", None)
            if close is not None:
                close()


class _Session:
    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        wire: Wire,
        *,
        on_open: Callable[[_Session], None] | None = None,
    ) -> None:
        self.stream = stream
        self.wire = wire
        self._on_open = on_open
        self.opened = anyio.Event()  # set once the handshake succeeded or failed
        self.done = anyio.Event()  # set once the connection task has ended
        timeout = wire.options.close_timeout
        self._linger = _FALLBACK_LINGER if timeout is None else timeout
        self._hook_bound = timeout
        self._tg: anyio.abc.TaskGroup | None = None
        self._pending: dict[int, _Pending] = {}
        self._hook: _Pending | None = None
        # ticker
        self._tick_event = anyio.Event()
        self._tick_dirty = False
        self._ticker_target = -math.inf  # what the ticker sleeps until (-inf: awake)
        # writer
        self._write_event = anyio.Event()
        self._write_dirty = False
        self._writing = False
        self._drained: anyio.Event | None = None
        self._broken = False
        # reader
        self._read_event = anyio.Event()
        self._reader_waiting = False
        wire.wakeup = self._wakeup

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
        self.wire.send(data, anyio.current_time())
        self.after()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing (a no-op once the transport is done)."""
        self.wire.close(code, reason, anyio.current_time())
        self.after()

    async def run(self) -> CloseResult:
        """Drive the connection to its end; closes the stream. Never raises for
        anything the peer does."""
        wire = self.wire
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                async with anyio.create_task_group() as io:
                    io.start_soon(self._reader)
                    io.start_soon(self._writer)
                    self._wake_writer()  # a client's request is already waiting
                    await self._ticker()
                    with anyio.move_on_after(self._linger):
                        await self._final_flush()
                    io.cancel_scope.cancel()
                await self._close_stream()
                self._cancel_pending()
                # The task group now waits only for on_close hooks (each bounded).
        finally:
            self._tg = None
            if not wire.should_close_transport:
                # Cancelled from outside (server abort) or a driver error.
                wire.abort(anyio.current_time(), "connection task cancelled")
                self._dispatch()
            self._cancel_pending()
            if self._hook is not None:
                self._hook.discard()
            await anyio.aclose_forcefully(self.stream)
            self.opened.set()
            self.done.set()
        return wire.result

    # -- after every wire call -------------------------------------------------

    def after(self, *, flush: bool = True) -> None:
        """Act on what the last wire call produced: run events, schedule the write
        (unless the caller flushes inline), re-arm the ticker and the reader."""
        self._dispatch()
        wire = self.wire
        if flush and wire.buffered_amount:
            self._wake_writer()
        if wire.should_close_transport:
            self._tick_event.set()
        else:
            deadline = wire.next_deadline
            if deadline is not None and deadline < self._ticker_target:
                self._tick_event.set()
        if self._reader_waiting and (wire.wants_data or wire.should_close_transport):
            self._read_event.set()

    def _dispatch(self) -> None:
        for event in self.wire.events():
            kind = type(event)
            if kind is Await:
                assert isinstance(event, Await)
                self._start_await(event)
            elif kind is CancelAwait:
                assert isinstance(event, CancelAwait)
                entry = self._pending.get(event.token)
                if entry is not None:
                    entry.scope.cancel()
                    entry.discard()
            elif kind is AwaitHandshake:
                assert isinstance(event, AwaitHandshake)
                self._start_hook(event)
            elif kind is Opened:
                self.opened.set()
                if self._on_open is not None:
                    self._on_open(self)
            elif kind is HandshakeFailed:
                self.opened.set()

    def _wakeup(self) -> None:
        # The flow produced events outside a wire call (an async handler or
        # application code sent or closed): the ticker collects them.
        self._tick_dirty = True
        self._tick_event.set()

    def _wake_writer(self) -> None:
        self._write_dirty = True
        self._write_event.set()

    # -- tasks -----------------------------------------------------------------

    async def _ticker(self) -> None:
        wire = self.wire
        while not wire.should_close_transport:
            now = anyio.current_time()
            deadline = wire.next_deadline
            if deadline is not None and now >= deadline:
                wire.tick(now)
                self.after()
                if wire.next_deadline == deadline and not wire.should_close_transport:
                    # A deadline that tick() did not consume would spin: back off.
                    logger.warning("%s: deadline %s not consumed by tick", wire.peer, deadline)
                    await anyio.sleep(0.01)
                continue
            if self._tick_dirty:
                self._tick_dirty = False
                wire.collect(now)
                self.after()
                continue
            event = anyio.Event()
            self._tick_event = event
            self._ticker_target = math.inf if deadline is None else deadline
            try:
                if deadline is None:
                    await event.wait()
                else:
                    with anyio.move_on_after(deadline - now):
                        await event.wait()
            finally:
                self._ticker_target = -math.inf

    async def _reader(self) -> None:
        wire = self.wire
        stream = self.stream
        while True:
            if not wire.wants_data:
                if wire.should_close_transport:
                    return
                event = anyio.Event()
                self._read_event = event
                self._reader_waiting = True
                try:
                    await event.wait()
                finally:
                    self._reader_waiting = False
                continue
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            except STREAM_ERRORS as exc:
                wire.abort(anyio.current_time(), f"read failed: {exc!r}")
                self.after()
                return
            wire.receive_data(data, anyio.current_time())
            self.after(flush=False)
            if wire.buffered_amount:
                await self._drain()
            if not data:
                return

    async def _writer(self) -> None:
        while True:
            if not self._write_dirty:
                event = anyio.Event()
                self._write_event = event
                await event.wait()
            self._write_dirty = False
            await self._drain()

    async def _drain(self) -> None:
        """Write everything the wire has, in order; whoever holds `_writing` drains."""
        if self._writing:
            return
        wire = self.wire
        self._writing = True
        try:
            while True:
                data = wire.data_to_send()
                if not data:
                    break
                if self._broken:
                    continue  # the transport failed: discard
                if self._reader_waiting and wire.wants_data:
                    self._read_event.set()
                try:
                    await self.stream.send(data if type(data) is bytes else bytes(data))
                except STREAM_ERRORS as exc:
                    self._broken = True
                    wire.abort(anyio.current_time(), f"write failed: {exc!r}")
                    self.after(flush=False)
        finally:
            self._writing = False
            if self._drained is not None:
                self._drained.set()
        if self._reader_waiting and wire.wants_data:
            self._read_event.set()

    async def _final_flush(self) -> None:
        while True:
            if self._writing:
                self._drained = anyio.Event()
                await self._drained.wait()
                continue
            if not self.wire.buffered_amount or self._broken:
                return
            await self._drain()

    async def _close_stream(self) -> None:
        try:
            with anyio.move_on_after(self._linger):
                await self.stream.aclose()
        except STREAM_ERRORS:
            pass

    # -- awaited handlers and hooks --------------------------------------------

    def _start_await(self, event: Await) -> None:
        entry = _Pending(event.awaitable)
        if self._tg is None:
            # The connection task is over (aborted): nothing can run it any more.
            logger.debug("%s: dropping %s awaitable after abort", self.wire.peer, event.step)
            entry.discard()
            return
        if event.step == _ON_CLOSE:
            self._tg.start_soon(self._run_close_hook, entry, event.step)
        else:
            self._pending[event.token] = entry
            self._tg.start_soon(self._run_await, entry, event.token)

    async def _run_await(self, entry: _Pending, token: int) -> None:
        if entry.started:  # discarded before it ran
            self._pending.pop(token, None)
            return
        entry.started = True
        result: object = None
        error: Exception | None = None
        try:
            with entry.scope:
                try:
                    result = await entry.awaitable
                except Exception as exc:
                    error = exc
        finally:
            self._pending.pop(token, None)
        if entry.scope.cancel_called:
            return
        now = anyio.current_time()
        wire = self.wire
        wire.collect(now)  # what the handler sent goes out before what follows it
        if error is not None:
            wire.resume_error(token, error, now)
        else:
            wire.resume(token, result, now)
        self.after()

    async def _run_close_hook(self, entry: _Pending, step: str) -> None:
        entry.started = True
        bound = self._hook_bound
        try:
            with anyio.move_on_after(math.inf if bound is None else bound) as scope:
                await entry.awaitable
            if scope.cancelled_caught:
                logger.warning("%s: on_close hook cancelled after %ss", self.wire.peer, bound)
        except Exception:
            logger.exception("%s: %s hook raised", self.wire.peer, step)

    def _start_hook(self, event: AwaitHandshake) -> None:
        entry = _Pending(event.awaitable)
        if self._tg is None:
            entry.discard()
            return
        self._hook = entry
        self._tg.start_soon(self._run_hook, entry)

    async def _run_hook(self, entry: _Pending) -> None:
        if entry.started:
            return
        entry.started = True
        result: object
        try:
            with entry.scope:
                try:
                    result = await entry.awaitable
                except Exception as exc:
                    result = exc
        finally:
            self._hook = None
        if entry.scope.cancel_called:
            return
        wire = self.wire
        if wire.phase is Phase.HOOK:  # not timed out or closed meanwhile
            wire.finish_handshake(result, anyio.current_time())
            self.after()

    def _cancel_pending(self) -> None:
        for entry in list(self._pending.values()):
            entry.scope.cancel()
            entry.discard()
        self._pending.clear()
        if self._hook is not None:
            self._hook.scope.cancel()
