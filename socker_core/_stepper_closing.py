"""How a Stepper ends: closing it, the transport ending, timeouts and failures,
and the on_close hooks that run once at the end."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._codes import CloseCode, is_sendable_close_code
from ._errors import LocalProtocolError
from ._events import Await, CancelAwait, Closed, CloseRequested, Event, HandlerFailed
from ._flow import StateT
from ._state import IGNORE, Happening, State
from ._stepper_base import _DETACHED_STATES, ON_CLOSE, _StepperBase


class _StepperClosing(_StepperBase[StateT]):
    """Ending a connection (see `_stepper_base`'s docstring for the layers)."""

    __slots__ = ()

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> list[Event]:
        """Application close from outside any handler (for example server shutdown: 1001)."""
        if self._check("close") is IGNORE:
            return []
        events = self._begin()
        try:
            self._close(code, reason)
        finally:
            self._events = None
        return events

    def transport_closed(self, code: int, reason: str, now: float) -> list[Event]:
        """The transport ended (close handshake done, or lost: 1006). Runs on_close once."""
        if self._check("transport_closed") is IGNORE:
            return []
        events = self._begin()
        try:
            events.extend(self._transport_closed(code, reason))
        finally:
            self._events = None
        return events

    def _transport_closed(self, code: int, reason: str) -> list[Event]:
        events: list[Event] = []
        saved, self._events = self._events, events
        try:
            opened = self._opened
            self._resume_deadline = None
            if self._phase is not State.CLOSING and self._phase is not State.DETACHED_CLOSING:
                self._cancel_pending()
                self._close_code, self._close_reason = code, reason
                self._initiated_locally = False
            self._drop_queue()
            self._move(Happening.TRANSPORT_CLOSED)
            if self.registry is not None:
                self.registry.discard(self.conn)  # out of every room before on_close
            if opened:
                for hook in self.flow.close_hooks:
                    self._run_hook(hook, ON_CLOSE)
            assert self._close_code is not None
            events.append(Closed(self._close_code, self._close_reason, self._initiated_locally))
        finally:
            self._events = saved
        return events

    def tick(self, now: float) -> list[Event]:
        """Let time pass: a step past its timeout closes with 4408; a detached
        session past its resume window ends (1006, "resume window expired")."""
        if self._check("tick") is IGNORE:
            return []
        events = self._begin()
        try:
            if not self._expire(now):
                window = self._resume_deadline
                if window is not None and now >= window and self._phase in _DETACHED_STATES:
                    if self._phase is State.DETACHED_CLOSING:
                        # We had decided to close: that code stands.
                        self._resume_deadline = None
                        code, reason = self._close_code, self._close_reason
                        assert code is not None
                        events.extend(self._transport_closed(code, reason))
                    else:
                        self._end_detached(CloseCode.ABNORMAL, "resume window expired", False)
        finally:
            self._events = None
        return events

    def _run_hook(self, hook: Callable[..., Any], name: str) -> None:
        try:
            result = hook(self.conn)
        except Exception as exc:
            self._emit(HandlerFailed(name, exc))
            return
        if inspect.isawaitable(result):
            self._last_token += 1
            self._emit(Await(self._last_token, result, name))

    def _expire(self, now: float) -> bool:
        deadline = self._deadline
        if deadline is None or now < deadline or self._phase in (State.CLOSING, State.CLOSED):
            return False
        step = self._steps[self._index]
        self._close(CloseCode.STEP_TIMEOUT, f"step {step.name!r} timed out after {step.timeout:g}s")
        return True

    def _fail(self, step_name: str, exc: BaseException) -> None:
        self._emit(HandlerFailed(step_name, exc))
        self._close(CloseCode.INTERNAL_ERROR, "internal error")

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._emit(CancelAwait(self._pending))
            self._pending = self._pending_hook = None

    def _end_detached(self, code: int, reason: str, locally: bool) -> None:
        """End a detached session: nothing to send, so straight to CLOSED."""
        self._cancel_pending()
        self._drop_queue()
        self._close_code, self._close_reason = int(code), reason
        self._initiated_locally = locally
        self._deadline = self._resume_deadline = None
        self._move(Happening.SESSION_ENDED)
        for hook in self.flow.close_hooks:
            self._run_hook(hook, ON_CLOSE)
        self._emit(Closed(self._close_code, reason, locally))

    def _close(self, code: int, reason: str) -> None:
        if self._phase is State.CLOSING or self._phase is State.CLOSED:
            return
        if not is_sendable_close_code(code):
            raise LocalProtocolError(f"close code {code} cannot be sent in a close frame")
        if len(reason.encode("utf-8")) > 123:
            raise LocalProtocolError("close reason is longer than 123 bytes of UTF-8")
        if self._phase in _DETACHED_STATES:
            self._end_detached(code, reason, True)
            return
        self._cancel_pending()
        self._drop_queue()
        self._close_code, self._close_reason = int(code), reason
        self._initiated_locally = True
        self._deadline = None
        self._move(Happening.CLOSE_STARTED)
        if self.registry is not None:
            self.registry.discard(self.conn)  # closing: no longer a broadcast recipient
        self._emit(CloseRequested(int(code), reason))

    def _drop_queue(self) -> None:
        queue = self._queue
        if queue is not None:
            queue.clear()  # a `_drain` in progress sees it empty
            self._queue = None
