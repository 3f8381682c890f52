"""The session base behind `socker_transports.anyio`, shared by the trio/stream
session (`_anyio_session._StreamSession`) and the asyncio protocol
(`_asyncio_protocol._ProtocolSession`).

`_SessionBase` is what every connection shares, whatever moves its bytes: it
owns one `Wire`, turns the wire's events into work (awaited handlers, hooks and
on_close hooks run as tasks spawned into the owner's task group: the server's or
the client's, never fire-and-forget) and reports when the connection is over
(transport closed *and* every task it spawned finished).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from socker_core import HOOK_STEPS as _HOOK_STEPS
from socker_core import Await, CancelAwait, Connection, RoomRef

from ._blocking import run_blocking_in_thread
from .wire import (
    AwaitHandshake,
    CloseResult,
    Detached,
    HandshakeFailed,
    Opened,
    Phase,
    Wire,
)

#: Bound (seconds) for the last write and for on_close hooks when close_timeout is None.
_FALLBACK_LINGER = 10.0

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
