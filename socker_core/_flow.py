"""Flow: the reusable definition of a step chain (the original's `connection.Add`)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._codes import is_sendable_close_code
from ._errors import FlowDefinitionError
from ._resume import DEFAULT_MAX_RESUME_BUFFER

if TYPE_CHECKING:
    from ._stepper import Connection


@dataclass(frozen=True, slots=True)
class Goto:
    """Handler result: jump to the step named `step`."""

    step: str


@dataclass(frozen=True, slots=True)
class Close:
    """Handler result: close the connection with `code` and `reason`."""

    code: int = 1000
    reason: str = ""

    def __post_init__(self) -> None:
        if not is_sendable_close_code(self.code):
            raise ValueError(f"close code {self.code} cannot be sent in a close frame")
        if len(self.reason.encode("utf-8")) > 123:
            raise ValueError("close reason is longer than 123 bytes of UTF-8")


#: What a handler may return: True advances, False/None stays.
Result = bool | Goto | Close | None
Handler = Callable[["Connection", bytes], Result | Awaitable[Result]]
Hook = Callable[["Connection"], Close | Awaitable[Any] | None]
H = TypeVar("H", bound=Handler)
K = TypeVar("K", bound=Hook)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    handler: Handler
    timeout: float | None


def _check_signature(func: Callable[..., Any], args: tuple[Any, ...], what: str) -> None:
    if not callable(func):
        raise FlowDefinitionError(f"{what} must be callable, got {func!r}")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust the caller
    try:
        signature.bind(*args)
    except TypeError as exc:
        name = getattr(func, "__qualname__", repr(func))
        raise FlowDefinitionError(
            f"{what} {name}{signature} cannot be called with {len(args)} positional "
            f"argument(s): {exc}"
        ) from None


class Flow:
    """An ordered chain of steps. One Flow serves any number of connections.

    >>> flow = Flow("echo")
    >>> @flow.step
    ... def echo(conn, message):
    ...     conn.send(message)
    ...     return False  # stay: every message comes here
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        step_timeout: float | None = None,
        resume_window: float | None = None,
        max_resume_buffer: int = DEFAULT_MAX_RESUME_BUFFER,
    ) -> None:
        if resume_window is not None and not resume_window > 0:
            raise FlowDefinitionError(f"resume_window must be positive, got {resume_window!r}")
        if max_resume_buffer < 1:
            raise FlowDefinitionError(
                f"max_resume_buffer must be positive, got {max_resume_buffer!r}"
            )
        self.name = name
        self.step_timeout = step_timeout
        #: Seconds a connection whose transport was lost stays detached, waiting for
        #: a resume (None: a lost transport ends the connection, as without resume).
        self.resume_window = resume_window
        #: Bytes of unacknowledged sends kept for replay, per connection and side.
        self.max_resume_buffer = max_resume_buffer
        self.detach_hooks: list[Hook] = []
        self.resume_hooks: list[Hook] = []
        self._steps: list[Step] = []
        self._steps_view: tuple[Step, ...] | None = None  # shared by every Stepper
        self._index: dict[str, int] = {}
        self.open_hooks: list[Hook] = []
        self.close_hooks: list[Hook] = []

    # -- definition ---------------------------------------------------------

    def add(
        self, handler: Handler, *, name: str | None = None, timeout: float | None = None
    ) -> Step:
        """Append a step (the original's `connection.Add(handler)`)."""
        _check_signature(handler, (None, b""), "step handler")
        step_name = name if name is not None else getattr(handler, "__name__", None)
        if not step_name or step_name == "<lambda>":
            step_name = f"step{len(self._steps)}"
        if not isinstance(step_name, str):
            raise FlowDefinitionError(f"step name must be a string, got {step_name!r}")
        if step_name in self._index:
            raise FlowDefinitionError(f"flow {self.name!r} already has a step named {step_name!r}")
        effective = timeout if timeout is not None else self.step_timeout
        if effective is not None and not effective > 0:
            raise FlowDefinitionError(f"step timeout must be positive, got {effective!r}")
        step = Step(step_name, handler, effective)
        self._index[step_name] = len(self._steps)
        self._steps.append(step)
        self._steps_view = None
        return step

    @overload
    def step(self, handler: H, /) -> H: ...
    @overload
    def step(
        self, *, name: str | None = None, timeout: float | None = None
    ) -> Callable[[H], H]: ...

    def step(
        self, handler: Any = None, *, name: str | None = None, timeout: float | None = None
    ) -> Any:
        """Decorator form of `add`: `@flow.step` or `@flow.step(name=..., timeout=...)`."""

        def register(func: Any) -> Any:
            self.add(func, name=name, timeout=timeout)
            return func

        return register(handler) if handler is not None else register

    def on_open(self, hook: K) -> K:
        """Run `hook(conn)` once when the connection opens (lets a server speak first)."""
        _check_signature(hook, (None,), "on_open hook")
        self.open_hooks.append(hook)
        return hook

    def on_close(self, hook: K) -> K:
        """Run `hook(conn)` exactly once when an opened connection ends, whatever the cause."""
        _check_signature(hook, (None,), "on_close hook")
        self.close_hooks.append(hook)
        return hook

    def on_detach(self, hook: K) -> K:
        """Run `hook(conn)` when the transport is lost and the connection is kept
        detached for `resume_window` (resumable flows only; may run many times)."""
        _check_signature(hook, (None,), "on_detach hook")
        self.detach_hooks.append(hook)
        return hook

    def on_resume(self, hook: K) -> K:
        """Run `hook(conn)` when a detached connection resumed on a new transport
        (after what the peer missed was replayed). on_open never runs on resume."""
        _check_signature(hook, (None,), "on_resume hook")
        self.resume_hooks.append(hook)
        return hook

    # -- inspection ---------------------------------------------------------

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps in order; one tuple shared until a step is added."""
        view = self._steps_view
        if view is None:
            view = self._steps_view = tuple(self._steps)
        return view

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    def validate(self) -> None:
        """Raise FlowDefinitionError unless the flow can run."""
        if not self._steps:
            raise FlowDefinitionError(f"flow {self.name!r} has no steps")

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={[s.name for s in self._steps]})"

    def mermaid(self) -> str:
        """The step chain as a Mermaid state diagram."""
        lines = ["stateDiagram-v2"]
        ids = {step.name: f"s{i}" for i, step in enumerate(self._steps)}
        for step in self._steps:
            label = (
                step.name if step.timeout is None else f"{step.name} (timeout {step.timeout:g}s)"
            )
            lines.append(f'    state "{label}" as {ids[step.name]}')
        if self._steps:
            lines.append(f"    [*] --> {ids[self._steps[0].name]}: open")
        for i, step in enumerate(self._steps):
            sid = ids[step.name]
            lines.append(f"    {sid} --> {sid}: False (stay)")
            if i + 1 < len(self._steps):
                lines.append(f"    {sid} --> {ids[self._steps[i + 1].name]}: True")
            else:
                lines.append(f"    {sid} --> [*]: True (close 1000)")
        return "\n".join(lines)
