"""`fuzz_flow` and `replay_fuzz`: random and adversarial inputs for one Stepper,
and the invariants every flow must keep under them (re-exported by
`socker_core.testing`). Standard library only; hypothesis is imported lazily by
`fuzz_flow`."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codes import CLOSE_CODES, is_sendable_close_code
from ._errors import ConnectionClosedError
from ._events import (
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    Event,
    FlowCompleted,
    HandlerFailed,
    Send,
    StepChanged,
)
from ._flow import Flow, Hook
from ._state import State
from ._stepper import DEFAULT_MAX_QUEUE, ON_CLOSE, ON_OPEN, Connection, Stepper
from ._testing_render import short
from ._testing_sim import DEFAULT_MAX_AWAIT_STEPS, NeedsEventLoopError, discard, trampoline


class FuzzOp:
    """One step of a fuzz run. Kinds:

    receive(bytes) · replay(i) (a message that once advanced a step) ·
    repeat(n) (the last message n more times) · send(bytes) (application send) ·
    tick(dt) (advance the clock and tick) · jump(dt) (advance the clock only) ·
    settle(mode) (finish the pending awaitable: "run", "error" or "cancel") ·
    close(code) (application close) · lost(code) (transport_closed).
    """

    # A plain class, not a dataclass, so that hypothesis prints its short repr.
    __slots__ = ("arg", "kind")

    def __init__(self, kind: str, arg: object = None) -> None:
        self.kind = kind
        self.arg = arg

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FuzzOp):
            return NotImplemented
        return (self.kind, self.arg) == (other.kind, other.arg)

    def __hash__(self) -> int:
        return hash((self.kind, self.arg))

    def __repr__(self) -> str:
        arg = _bytes_literal(self.arg) if isinstance(self.arg, bytes) else repr(self.arg)
        return f"{self.kind}({arg})"


def _bytes_literal(data: bytes) -> str:
    """A Python expression for `data` that stays short when it is a long repetition."""
    if len(data) <= 64:
        return repr(data)
    for width in range(1, 9):
        unit = data[:width]
        count, rest = divmod(len(data), width)
        if unit * count == data[: width * count] and data[width * count :] == unit[:rest]:
            tail = f" + {data[width * count :]!r}" if rest else ""
            return f"{unit!r} * {count}{tail}"
    return f"{data[:32]!r}...<{len(data)} bytes>"


def _trace_line(label: str, what: object) -> str:
    if label == "op":
        return f"op {what!r}"
    if isinstance(what, list):
        what = "[" + ", ".join(_event_text(e) for e in what) + "]"
    return f"{label} -> {what}"[:300]


def _event_text(event: Event) -> str:
    if isinstance(event, Send):
        return f"Send({short(event.data)})"
    return repr(event)


@dataclass
class FuzzStats:
    """What `fuzz_flow` saw: how many runs, which close codes, how far the flow got."""

    runs: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    steps_reached: Counter[str] = field(default_factory=Counter)
    handler_failures: int = 0


class FuzzFailure(AssertionError):
    """A flow (or the core) broke an invariant. The message holds the reproducer."""

    def __init__(self, message: str, ops: Sequence[FuzzOp], eager: bool) -> None:
        super().__init__(message)
        self.ops = list(ops)
        self.eager = eager


class _InjectedError(Exception):
    """An error fuzz_flow fed to `resume_error` on purpose."""


class _InjectedCancel(Exception):
    """fuzz_flow cancelled a pending awaitable (as a driver's cancellation would)."""


def _probe_flow(flow: Flow, counts: list[int]) -> Flow:
    """A copy of `flow` whose on_close hooks count their calls (counts[i] per hook)."""
    probe = Flow(flow.name)
    for step in flow.steps:
        probe.add(step.handler, name=step.name, timeout=step.timeout)
    probe.open_hooks = list(flow.open_hooks)

    def counted(position: int, hook: Hook) -> Hook:
        def run(conn: Connection) -> Any:
            counts[position] += 1
            return hook(conn)

        return run

    def sentinel(conn: Connection) -> None:
        counts[-1] += 1

    probe.close_hooks = [counted(i, hook) for i, hook in enumerate(flow.close_hooks)]
    probe.close_hooks.append(sentinel)
    return probe


class _FuzzRun:
    """One example: a fresh Stepper, the ops, and the invariant checks."""

    def __init__(
        self,
        flow: Flow,
        ops: Sequence[FuzzOp],
        eager: bool,
        *,
        max_queue: int,
        clock_start: float,
        allowed_errors: tuple[type[BaseException], ...],
        max_await_steps: int,
        stats: FuzzStats,
    ) -> None:
        self.counts = [0] * (len(flow.close_hooks) + 1)
        self.flow = _probe_flow(flow, self.counts)
        self.step_names = {s.name for s in self.flow.steps} | {ON_OPEN, ON_CLOSE}
        self.stepper = Stepper(self.flow, max_queue=max_queue)
        self.ops = ops
        self.eager = eager
        self.now = clock_start
        self.allowed_errors = allowed_errors
        self.max_await_steps = max_await_steps
        self.stats = stats
        self.trace: list[tuple[str, object]] = []  # formatted only on failure
        self.pending: Await | None = None
        self.running: int | None = None
        self.last_token = 0
        self.step: str | None = None
        self.close_requested: CloseRequested | None = None
        self.closed: Closed | None = None
        self.expect_normal_close = False
        self.lost_code: tuple[int, str] | None = None
        self.advancing: list[bytes] = []
        self.last_message: bytes | None = None
        self.injected: set[int] = set()

    # -- reporting -------------------------------------------------------------

    def fail(self, problem: str) -> FuzzFailure:
        trace = [_trace_line(label, what) for label, what in self.trace[-40:]]
        lines = [
            f"fuzz_flow({self.flow.name!r}): {problem}",
            f"reproduce: eager={self.eager}, ops={list(self.ops)!r}",
            "(replay_fuzz(flow, failure.ops, eager=failure.eager) runs it again)",
            "trace (last 40 lines):",
            *(f"  {line}" for line in trace),
        ]
        return FuzzFailure("\n".join(lines), self.ops, self.eager)

    # -- calling the Stepper --------------------------------------------------

    def call(self, label: str, method: Callable[..., list[Event]], *args: Any) -> list[Event]:
        try:
            events = method(*args)
        except FuzzFailure:
            raise
        except NeedsEventLoopError:
            raise
        except Exception as exc:
            raise self.fail(f"Stepper.{label} raised {type(exc).__name__}: {exc}") from exc
        self.trace.append((label, events))
        self.absorb(events)
        return events

    def expect_closed_error(self, label: str, method: Callable[..., list[Event]]) -> None:
        try:
            events = method()
        except ConnectionClosedError:
            self.trace.append((label, "ConnectionClosedError (expected)"))
            return
        except Exception as exc:
            raise self.fail(
                f"Stepper.{label} on a {self.stepper.phase.value} connection raised "
                f"{type(exc).__name__}, expected ConnectionClosedError"
            ) from exc
        raise self.fail(
            f"Stepper.{label} on a {self.stepper.phase.value} connection returned {events!r}, "
            "expected ConnectionClosedError"
        )

    # -- event checks ----------------------------------------------------------

    def absorb(self, events: Iterable[Event]) -> None:
        for event in events:
            self.check(event)
        if self.expect_normal_close:
            raise self.fail("FlowCompleted was not followed by CloseRequested(1000)")

    def check(self, event: Event) -> None:
        if self.closed is not None:
            raise self.fail(f"event {event!r} after Closed")
        if isinstance(event, Send):
            if not isinstance(event.data, (bytes, bytearray, memoryview, str)):
                raise self.fail(f"Send carries {type(event.data).__name__}, not bytes or str")
            if self.close_requested is not None:
                raise self.fail(f"{event!r} after CloseRequested")
        elif isinstance(event, StepChanged):
            steps = self.flow.steps
            if not 0 <= event.index < len(steps) or steps[event.index].name != event.to_step:
                raise self.fail(f"{event!r} does not name a step of the flow")
            if event.from_step != self.step:
                raise self.fail(f"{event!r}: the connection was in step {self.step!r}")
            if self.close_requested is not None:
                raise self.fail(f"{event!r} after CloseRequested")
            self.step = event.to_step
            self.stats.steps_reached[event.to_step] += 1
        elif isinstance(event, Await):
            if event.token <= self.last_token:
                raise self.fail(f"{event!r}: tokens must increase (last {self.last_token})")
            self.last_token = event.token
            if not inspect.isawaitable(event.awaitable):
                raise self.fail(f"{event!r} carries something that is not awaitable")
            if event.step not in self.step_names:
                raise self.fail(f"{event!r} names no step or hook")
            if event.step == ON_CLOSE:
                self.run_close_hook(event)
            else:
                if self.pending is not None or self.running is not None:
                    raise self.fail(f"{event!r} while another await is pending")
                self.pending = event
        elif isinstance(event, CancelAwait):
            if self.pending is not None and event.token == self.pending.token:
                discard(self.pending.awaitable)
                self.pending = None
            elif event.token != self.running:
                raise self.fail(f"{event!r} for a token that is not pending")
        elif isinstance(event, HandlerFailed):
            if event.step not in self.step_names:
                raise self.fail(f"{event!r} names no step or hook")
            self.handler_failed(event.step, event.exception)
        elif isinstance(event, FlowCompleted):
            if event.last_step != self.flow.steps[-1].name:
                raise self.fail(f"{event!r} but the last step is {self.flow.steps[-1].name!r}")
            self.expect_normal_close = True
        elif isinstance(event, CloseRequested):
            if self.close_requested is not None:
                raise self.fail(f"second close request {event!r}")
            if not is_sendable_close_code(event.code):
                raise self.fail(f"{event!r}: code cannot be sent in a close frame")
            if len(event.reason.encode("utf-8")) > 123:
                raise self.fail(f"{event!r}: reason is longer than 123 bytes")
            if self.expect_normal_close and event.code != 1000:
                raise self.fail(f"FlowCompleted followed by {event!r}, not 1000")
            self.expect_normal_close = False
            self.close_requested = event
        elif isinstance(event, Closed):
            if self.close_requested is not None:
                expected = (self.close_requested.code, self.close_requested.reason, True)
            elif self.lost_code is not None:
                expected = (*self.lost_code, False)
            else:
                raise self.fail(f"{event!r} without a close request or transport_closed")
            if (event.code, event.reason, event.initiated_locally) != expected:
                raise self.fail(f"{event!r}, expected Closed{expected!r}")
            self.closed = event
        else:
            raise self.fail(f"unknown event {event!r}")

    def handler_failed(self, step: str, exc: BaseException) -> None:
        if id(exc) in self.injected:
            return
        self.stats.handler_failures += 1
        if isinstance(exc, self.allowed_errors):
            return
        raise self.fail(
            f"{'hook' if step.startswith('<') else 'step'} {step!r} failed: "
            f"{type(exc).__name__}: {exc}"
        )

    def run_close_hook(self, event: Await) -> None:
        ok, value = trampoline(event.awaitable, self.max_await_steps, "fuzz_flow")
        self.absorb(self.stepper.pending_events())
        if not ok:
            assert isinstance(value, BaseException)
            self.handler_failed(ON_CLOSE, value)

    # -- ops ------------------------------------------------------------------

    def settle(self, mode: str) -> None:
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        stepper = self.stepper
        if mode == "run":
            self.running = pending.token
            try:
                ok, value = trampoline(pending.awaitable, self.max_await_steps, "fuzz_flow")
                self.absorb(stepper.pending_events())
            finally:
                self.running = None
            if ok:
                self.call("resume", stepper.resume, pending.token, value, self.now)
                return
            assert isinstance(value, BaseException)
            error: BaseException = value
        else:
            discard(pending.awaitable)
            error = (
                _InjectedError("injected by fuzz_flow") if mode == "error" else _InjectedCancel()
            )
            self.injected.add(id(error))
        self.call("resume_error", stepper.resume_error, pending.token, error, self.now)

    def receive(self, message: bytes) -> None:
        stepper = self.stepper
        self.last_message = message
        if stepper.is_closed:
            self.expect_closed_error("receive", lambda: stepper.receive(message, self.now))
            return
        for _ in range(stepper.max_queue + 2):
            if stepper.accepting or self.pending is None:
                break
            self.settle("run")  # a driver stops reading until the handler finishes
        if not stepper.accepting:
            raise self.fail("Stepper.accepting is False but no await is pending")
        events = self.call("receive", stepper.receive, message, self.now)
        if any(isinstance(e, StepChanged) for e in events) and message not in self.advancing:
            self.advancing.append(message)

    def apply(self, op: FuzzOp) -> None:
        stepper = self.stepper
        kind, arg = op.kind, op.arg
        self.trace.append(("op", op))
        if kind == "receive":
            assert isinstance(arg, bytes)
            self.receive(arg)
        elif kind == "replay":
            assert isinstance(arg, int)
            if self.advancing:  # nothing has advanced yet: nothing to replay
                self.receive(self.advancing[arg % len(self.advancing)])
        elif kind == "repeat":
            assert isinstance(arg, int)
            last = self.last_message
            for _ in range(arg if last is not None else 0):
                assert last is not None
                self.receive(last)
        elif kind == "send":
            assert isinstance(arg, bytes)
            if stepper.phase in (State.OPEN, State.AWAITING):
                self.call("send", stepper.send, arg, self.now)
            else:
                self.expect_closed_error("send", lambda: stepper.send(arg, self.now))
        elif kind in ("tick", "jump"):
            assert isinstance(arg, float)
            self.now += arg
            if kind == "tick":
                self.call("tick", stepper.tick, self.now)
        elif kind == "settle":
            assert isinstance(arg, str)
            self.settle(arg)
        elif kind == "close":
            assert isinstance(arg, int)
            self.call("close", stepper.close, arg, "fuzz_flow close", self.now)
        elif kind == "lost":
            assert isinstance(arg, int)
            if not stepper.is_closed and stepper.phase is not State.CLOSING:
                self.lost_code = (arg, "fuzz_flow transport closed")
            self.call(
                "transport_closed",
                stepper.transport_closed,
                arg,
                "fuzz_flow transport closed",
                self.now,
            )
        else:
            raise ValueError(f"unknown fuzz op {op!r}")
        if self.eager:
            for _ in range(stepper.max_queue + 2):
                if self.pending is None:
                    break
                self.settle("run")

    def run(self) -> None:
        stepper = self.stepper
        self.call("open", stepper.open, self.now)
        if self.eager:
            while self.pending is not None:
                self.settle("run")
        for op in self.ops:
            self.apply(op)
        # The end: the transport goes away (the close handshake finished, or was lost).
        if not stepper.is_closed:
            if stepper.phase is State.CLOSING:
                code, reason = stepper.close_code or 1000, stepper.close_reason
            else:
                code, reason = 1006, "fuzz_flow: end of run"
                self.lost_code = (code, reason)
            self.call("transport_closed", stepper.transport_closed, code, reason, self.now)
        self.finish()

    def finish(self) -> None:
        stepper = self.stepper
        if not stepper.is_closed or self.closed is None:
            raise self.fail(f"the connection is {stepper.phase.value} after transport_closed")
        if self.pending is not None:
            raise self.fail(f"{self.pending!r} still pending after the connection closed")
        code = self.closed.code
        if code not in CLOSE_CODES and not 3000 <= code <= 4999:
            raise self.fail(f"closed with {code}, which is neither in CLOSE_CODES nor 3000-4999")
        if stepper.close_code != code:
            raise self.fail(f"Stepper.close_code is {stepper.close_code}, Closed says {code}")
        if any(count != 1 for count in self.counts):
            raise self.fail(f"on_close hooks ran {self.counts} times (each must run exactly once)")
        if stepper.next_deadline is not None:
            raise self.fail("a closed connection still has a deadline")
        self.stats.runs += 1
        self.stats.close_codes[int(code)] += 1


def replay_fuzz(
    flow: Flow,
    ops: Sequence[FuzzOp],
    *,
    eager: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
    clock_start: float = 0.0,
    allowed_errors: tuple[type[BaseException], ...] = (),
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> FuzzStats:
    """Run one fuzz example again, without hypothesis: `replay_fuzz(flow, failure.ops,
    eager=failure.eager)` reproduces a FuzzFailure (raising it again) once you have
    written the fix it passes."""
    stats = FuzzStats()
    _FuzzRun(
        flow,
        list(ops),
        eager,
        max_queue=max_queue,
        clock_start=clock_start,
        allowed_errors=allowed_errors,
        max_await_steps=max_await_steps,
        stats=stats,
    ).run()
    return stats


def fuzz_flow(
    flow: Flow,
    *,
    max_examples: int = 200,
    messages: Sequence[bytes] = (),
    max_ops: int = 40,
    max_queue: int = DEFAULT_MAX_QUEUE,
    clock_start: float = 0.0,
    allowed_errors: tuple[type[BaseException], ...] = (),
    seed: int | None = None,
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> FuzzStats:
    """Hammer `flow` with random and adversarial inputs and check its invariants.

    Each example opens a fresh Stepper, applies a hypothesis-generated list of
    FuzzOps (messages: empty, huge, repeated, arbitrary, your `messages`,
    replays of messages that advanced a step; clock jumps and ticks around the
    step timeouts; application sends and closes; transport closes; pending
    awaitables run, failed or cancelled), then closes the transport. Checked:

    - nothing escapes a Stepper call (the harness only makes legal calls and
      respects `accepting`; after a close, `receive`/`send` must raise
      ConnectionClosedError);
    - no handler or hook fails, except with `allowed_errors` (failures the
      harness injected itself do not count);
    - events are well formed and in a legal order; the run ends CLOSED with a
      code from CLOSE_CODES or a user code 3000-4999; every on_close hook ran
      exactly once.

    On failure raises FuzzFailure (an AssertionError) for hypothesis' minimal
    example; its message holds the reproducing op sequence and a trace, and
    `replay_fuzz(flow, failure.ops, eager=failure.eager)` runs it again.
    Returns FuzzStats about the runs. Needs hypothesis (imported here, lazily).
    """
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is a dev dependency
        raise ImportError(
            "socker_core.testing.fuzz_flow needs hypothesis: `pip install hypothesis` "
            "(it is part of socker-steps[dev]); run_pair and the rest of socker_core need nothing"
        ) from exc

    flow.validate()
    timeouts = sorted({float(s.timeout) for s in flow.steps if s.timeout is not None})
    interesting = [0.0, 1e-9, 1.0, 1e9]
    for t in timeouts:
        interesting += [t, max(t - 1e-6, 0.0), t + 1e-6]

    def weighted(*choices: tuple[int, Any]) -> Any:
        # (one_of would merge repeated branches; sampled_from keeps the weights)
        pool = [strategy for weight, strategy in choices for _ in range(weight)]
        return st.sampled_from(pool).flatmap(lambda strategy: strategy)

    short = 2 * timeouts[-1] if timeouts else 10.0
    delays = weighted(
        (3, st.sampled_from(interesting)),
        (2, st.floats(0.0, short, allow_nan=False, allow_infinity=False)),
        (1, st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)),
    )
    huge = st.builds(
        lambda unit, count: unit * count,
        st.binary(min_size=1, max_size=4),
        st.integers(1 << 10, 1 << 18),
    )

    known = [(6, st.sampled_from([bytes(m) for m in messages]))] if messages else []
    any_message = weighted(*known, (1, st.just(b"")), (1, st.binary(max_size=32)), (1, huge))

    def op(kind: str, arg: Any) -> Any:
        return st.builds(FuzzOp, st.just(kind), arg)

    any_op = weighted(
        (8, op("receive", any_message)),
        (2, op("replay", st.integers(0, 7))),
        (2, op("settle", st.sampled_from(["run", "run", "error", "cancel"]))),
        (2, op("tick", delays)),
        (1, op("jump", delays)),
        (1, op("repeat", st.integers(1, 20))),
        (1, op("send", st.binary(max_size=8))),
        (1, op("close", st.sampled_from([1000, 1001]))),
        (1, op("lost", st.sampled_from(sorted(int(code) for code in CLOSE_CODES)))),
    )
    stats = FuzzStats()

    def example(ops: list[FuzzOp], eager: bool) -> None:
        _FuzzRun(
            flow,
            ops,
            eager,
            max_queue=max_queue,
            clock_start=clock_start,
            allowed_errors=allowed_errors,
            max_await_steps=max_await_steps,
            stats=stats,
        ).run()

    test = hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        phases=[phase for phase in hypothesis.Phase if phase.name != "explain"],
        suppress_health_check=list(hypothesis.HealthCheck),
    )(hypothesis.given(ops=st.lists(any_op, max_size=max_ops), eager=st.booleans())(example))
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    test()
    return stats
