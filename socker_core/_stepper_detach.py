"""A Stepper without its transport: detach and attach (resume after a lost
connection), forget (resumed on another worker) and what a restored copy needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._codes import CloseCode
from ._errors import HandlerError, LocalProtocolError
from ._events import Await, Closed, CloseRequested, Event, HandlerFailed
from ._flow import Close, Goto, StateT
from ._ledger import RoomRef
from ._state import IGNORE, Happening, State
from ._stepper_base import (
    _BYTES_LIKE,
    _OPEN,
    _TEXT_ON_RESUMABLE,
    ON_DETACH,
    ON_RESUME,
)
from ._stepper_closing import _StepperClosing


class _StepperDetach(_StepperClosing[StateT]):
    """Detach, attach and forget (see `_stepper_base`'s docstring for the layers)."""

    __slots__ = ()

    def detach(self, now: float, window: float) -> list[Event]:
        """The transport was lost without a close handshake and the connection may
        resume within `window` seconds: keep the step, its timers, the wait queue
        and (in the replay buffer) every send; run the on_detach hooks. A Stepper
        without a replay buffer, or whose buffer overflowed, ends instead (as
        `transport_closed(1006)`, or with 4413)."""
        if self._check("detach") is IGNORE:
            return []
        replay = self._replay
        if replay is None:
            return self.transport_closed(CloseCode.ABNORMAL, "connection lost", now)
        if replay.overflowed:
            return self.transport_closed(
                CloseCode.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed", now
            )
        events = self._begin()
        try:
            closing = self._phase is State.CLOSING
            self._move(Happening.DETACHED)
            self._resume_deadline = now + window
            if not closing:  # a closing connection is not coming back to the app
                for hook in self.flow.detach_hooks:
                    self._run_hook(hook, ON_DETACH)
        finally:
            self._events = None
        return events

    def attach(self, now: float) -> list[Event]:
        """A new transport resumed this detached connection (after the replay was
        written): back to OPEN (or AWAITING), then the on_resume hooks run."""
        self._check("attach")
        events = self._begin()
        try:
            closing = self._phase is State.DETACHED_CLOSING
            self._move(Happening.ATTACHED)
            self._resume_deadline = None
            if closing:
                assert self._close_code is not None
                self._emit(CloseRequested(self._close_code, self._close_reason))
                return events
            for hook in self.flow.resume_hooks:
                self._run_resume_hook(hook, now)
                if self._phase is not _OPEN and self._phase is not State.AWAITING:
                    break  # a hook closed the connection
        finally:
            self._events = None
        return events

    def forget(self, now: float) -> list[Event]:
        """This detached copy was resumed on another worker, which runs the session
        from now on: end it here *without* its on_close hooks (they run once, where
        the session really ends). Closed(4409) follows."""
        if self._check("forget") is IGNORE:
            return []
        events = self._begin()
        try:
            self._cancel_pending()
            self._drop_queue()
            self._close_code = int(CloseCode.SESSION_TAKEN_OVER)
            self._close_reason = "resumed on another worker"
            self._initiated_locally = False
            self._deadline = self._resume_deadline = None
            self._move(Happening.FORGOTTEN)
            if self.registry is not None:
                self.registry.discard(self.conn)
            self._emit(Closed(self._close_code, self._close_reason, False))
        finally:
            self._events = None
        return events

    @property
    def _awaiting_hook(self) -> bool:
        """An on_open hook (not a step handler) is what is pending."""
        return self._pending_hook is not None

    def _place(self, step_name: str, remaining: float | None, now: float) -> None:
        """Put a restored Stepper at `step_name`, `remaining` seconds before its timeout."""
        index = self.flow.index_of(step_name)
        if index is None:
            raise LocalProtocolError(f"flow {self.flow.name!r} has no step {step_name!r}")
        self._index = index
        self._handler = self._handler_of(self._steps[index])
        self._deadline = None if remaining is None else now + remaining

    def _run_resume_hook(self, hook: Callable[..., Any], now: float) -> None:
        """An on_resume hook; it may return Goto(step) to go back to a step (e.g. one
        that renegotiates what could not move with the session: a WebRTC peer
        connection on another worker), or Close."""
        try:
            result = hook(self.conn)
        except Exception as exc:
            self._emit(HandlerFailed(ON_RESUME, exc))
            return
        if isinstance(result, Goto):
            target = self.flow.index_of(result.step)
            if target is None:
                self._emit(
                    HandlerFailed(ON_RESUME, HandlerError(f"Goto({result.step!r}): no such step"))
                )
            elif self._phase is _OPEN:
                self._emit_step_change(target, now)
        elif isinstance(result, Close):
            self._close(result.code, result.reason)
        elif inspect.isawaitable(result):
            self._last_token += 1
            self._emit(Await(self._last_token, result, ON_RESUME))

    def _send_detached(self, data: bytes | str, origin: RoomRef | None = None) -> None:
        """No transport: keep the message for replay; past max_resume_buffer the
        session cannot be replayed any more, so it ends now (4413)."""
        if isinstance(data, str):
            raise LocalProtocolError(_TEXT_ON_RESUMABLE)
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        replay = self._replay
        assert replay is not None
        if not replay.retain(bytes(data), origin):
            self._end_detached(CloseCode.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed", True)
