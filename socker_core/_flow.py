"""Flow: the reusable definition of a step chain (the original's `connection.Add`)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._codes import is_sendable_close_code
from ._errors import FlowDefinitionError
from ._resume import DEFAULT_MAX_RESUME_BUFFER
from ._snapshot import JsonStateCodec, StateCodec

if TYPE_CHECKING:
    # A default (PEP 696) keeps a bare `Flow` / `Connection` meaning `...[Any]`, so
    # code written before the generics still type-checks unchanged. Only the type
    # checker sees typing_extensions: at run time this module is stdlib-only.
    from typing_extensions import TypeVar as _TypeVarWithDefault

    from ._stepper import Connection

    StateT = _TypeVarWithDefault("StateT", default=Any)
else:
    StateT = TypeVar("StateT")


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
#: A step handler: `handler(conn, message)`, plain or `async def`, returning a `Result`.
#: It takes the message as it arrived: `bytes` for binary messages, `str` for
#: text ones (only with the wire's `accept_text=True`); annotate `bytes`, `str` or both.
Handler = Callable[["Connection", Any], Result | Awaitable[Result]]
#: An `on_open` / `on_close` hook: `hook(conn)`, plain or `async def`.
Hook = Callable[["Connection"], Close | Awaitable[Any] | None]
#: An `on_resume` hook: like a Hook, and it may return `Goto(step)`.
ResumeHook = Callable[["Connection"], Close | Goto | Awaitable[Any] | None]
# What a decorated handler or hook returns, kept so the decorators give back the
# function's own return type.
_R = TypeVar("_R", bound=Result | Awaitable[Result])
# What a step handler takes: bytes (binary messages), or str (text, with accept_text).
_M = TypeVar("_M", bytes, str)
_HookR = TypeVar("_HookR", bound=Close | Awaitable[Any] | None)
_ResumeHookR = TypeVar("_ResumeHookR", bound=Close | Goto | Awaitable[Any] | None)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a flow: its name, its handler, its timeout (seconds or None), and
    `blocking`: a plain `def` handler that blocks (I/O, CPU), which an event-loop
    driver runs in a worker thread, in message order; the core only records the
    flag (`Stepper.run_blocking`)."""

    name: str
    handler: Handler
    timeout: float | None
    blocking: bool = False


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


class Flow(Generic[StateT]):
    """An ordered chain of steps. One Flow serves any number of connections.

    Examples:
        >>> flow = Flow("echo")
        >>> @flow.step
        ... def echo(conn, message):
        ...     conn.send(message)
        ...     return False  # stay: every message comes here

    `state` is a factory (a class, or any callable with no arguments) that makes
    each connection's `conn.state` on first use; the default makes a
    `types.SimpleNamespace`. Giving one also tells a type checker what
    `conn.state` is: `Flow("game", state=GameState)` is a `Flow[GameState]`,
    whose handlers take a `Connection[GameState]`.
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        step_timeout: float | None = None,
        state: Callable[[], StateT] | None = None,
        resume_window: float | None = None,
        max_resume_buffer: int = DEFAULT_MAX_RESUME_BUFFER,
        state_codec: StateCodec | None = None,
    ) -> None:
        if resume_window is not None and not resume_window > 0:
            raise FlowDefinitionError(f"resume_window must be positive, got {resume_window!r}")
        if max_resume_buffer < 1:
            raise FlowDefinitionError(
                f"max_resume_buffer must be positive, got {max_resume_buffer!r}"
            )
        self.name = name
        self.step_timeout = step_timeout
        #: Makes a connection's `conn.state` the first time it is used.
        self.state_factory: Callable[[], StateT] = (
            state if state is not None else SimpleNamespace  # type: ignore[assignment]
        )
        #: Seconds a connection whose transport was lost stays detached, waiting for
        #: a resume (None: a lost transport ends the connection, as without resume).
        self.resume_window = resume_window
        #: Bytes of unacknowledged sends kept for replay, per connection and side.
        self.max_resume_buffer = max_resume_buffer
        if state_codec is not None and not isinstance(state_codec, StateCodec):
            raise FlowDefinitionError(
                f"state_codec needs encode(state) -> bytes and decode(bytes) -> state, "
                f"got {state_codec!r}"
            )
        #: How `conn.state` travels in a session snapshot (resume on another worker):
        #: JSON of its attributes by default (`JsonStateCodec`).
        self.state_codec: StateCodec = (
            state_codec if state_codec is not None else JsonStateCodec(self.state_factory)
        )
        self.detach_hooks: list[Hook] = []
        self.resume_hooks: list[ResumeHook] = []
        self._steps: list[Step] = []
        self._steps_view: tuple[Step, ...] | None = None  # shared by every Stepper
        self._index: dict[str, int] = {}
        #: `on_open` hooks, in the order they were added.
        self.open_hooks: list[Hook] = []
        #: `on_close` hooks, in the order they were added.
        self.close_hooks: list[Hook] = []

    # -- definition ---------------------------------------------------------

    def add(
        self,
        handler: Callable[[Connection[StateT], _M], Result | Awaitable[Result]],
        *,
        name: str | None = None,
        timeout: float | None = None,
        blocking: bool = False,
    ) -> Step:
        """Append a step (the original's `connection.Add(handler)`).

        `name` defaults to the handler's `__name__`; `timeout` (seconds, default the
        flow's `step_timeout`) closes the connection with 4408 if the step is not
        left in time. `blocking=True`: the handler is a plain `def` that may block;
        the anyio driver and the ASGI App run it in a worker thread (messages stay
        in order; its `conn.send`/`conn.close` are carried to the event loop); on the
        threaded driver every handler already runs on its connection's own thread.
        Raises `FlowDefinitionError` for a duplicate name, a handler that cannot take
        `(conn, message)`, a non-positive timeout, or `blocking=True` on an
        `async def` handler."""
        _check_signature(handler, (None, b""), "step handler")
        if blocking and inspect.iscoroutinefunction(handler):
            raise FlowDefinitionError("blocking=True is for plain def handlers, not async def")
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
        step = Step(step_name, handler, effective, bool(blocking))
        self._index[step_name] = len(self._steps)
        self._steps.append(step)
        self._steps_view = None
        return step

    @overload
    def step(
        self, handler: Callable[[Connection[StateT], _M], _R], /
    ) -> Callable[[Connection[StateT], _M], _R]: ...
    @overload
    def step(
        self, *, name: str | None = None, timeout: float | None = None, blocking: bool = False
    ) -> Callable[
        [Callable[[Connection[StateT], _M], _R]], Callable[[Connection[StateT], _M], _R]
    ]: ...

    def step(
        self,
        handler: Any = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        blocking: bool = False,
    ) -> Any:
        """Decorator form of `add`: `@flow.step` or
        `@flow.step(name=..., timeout=..., blocking=...)`."""

        def register(func: Any) -> Any:
            self.add(func, name=name, timeout=timeout, blocking=blocking)
            return func

        return register(handler) if handler is not None else register

    def on_open(
        self, hook: Callable[[Connection[StateT]], _HookR]
    ) -> Callable[[Connection[StateT]], _HookR]:
        """Run `hook(conn)` once when the connection opens (lets a server speak first)."""
        _check_signature(hook, (None,), "on_open hook")
        self.open_hooks.append(hook)
        return hook

    def on_close(
        self, hook: Callable[[Connection[StateT]], _HookR]
    ) -> Callable[[Connection[StateT]], _HookR]:
        """Run `hook(conn)` exactly once when an opened connection ends, whatever the cause."""
        _check_signature(hook, (None,), "on_close hook")
        self.close_hooks.append(hook)
        return hook

    def on_detach(
        self, hook: Callable[[Connection[StateT]], _HookR]
    ) -> Callable[[Connection[StateT]], _HookR]:
        """Run `hook(conn)` when the transport is lost and the connection is kept
        detached for `resume_window` (resumable flows only; may run many times)."""
        _check_signature(hook, (None,), "on_detach hook")
        self.detach_hooks.append(hook)
        return hook

    def on_resume(
        self, hook: Callable[[Connection[StateT]], _ResumeHookR]
    ) -> Callable[[Connection[StateT]], _ResumeHookR]:
        """Run `hook(conn)` when a detached connection resumed on a new transport
        (after what the peer missed was replayed). on_open never runs on resume.
        The hook may return `Goto(step)` to go back to a step (a session restored on
        another worker renegotiates there what could not move: a WebRTC peer
        connection), or `Close(...)`."""
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
        """The position of the step called `name`, or None."""
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
