"""Hypothesis properties of the Stepper: a reference model, ordering, time, bounds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socker_core import (
    Await,
    Close,
    CloseRequested,
    Event,
    Flow,
    FlowCompleted,
    Goto,
    QueueFullError,
    Send,
    State,
    StepChanged,
    Stepper,
)
from socker_core.testing import fuzz_flow, resolve

FAST = settings(max_examples=120, deadline=None)

# -- a reference model of advance / stay / Goto / Close ---------------------------


def results(steps: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.booleans(),
        st.none(),
        st.integers(0, steps - 1).map(lambda i: Goto(f"s{i}")),
        st.sampled_from([Close(1000), Close(3000, "x"), Close(4999, "bye")]),
    )


@st.composite
def scripts(draw: st.DrawFn) -> tuple[int, list[Any]]:
    steps = draw(st.integers(1, 5))
    return steps, draw(st.lists(results(steps), max_size=30))


@FAST
@given(scripts())
def test_the_stepper_matches_a_reference_model(case: tuple[int, list[Any]]) -> None:
    steps, script = case
    remaining = list(script)
    calls: list[str] = []

    def make(name: str) -> Any:
        def handler(conn: Any, message: bytes) -> Any:
            calls.append(name)
            return remaining.pop(0)

        return handler

    flow = Flow("model")
    names = [f"s{i}" for i in range(steps)]
    for name in names:
        flow.add(make(name), name=name)
    stepper = Stepper(flow)
    stepper.open(0.0)

    index, closed = 0, False
    expected_calls: list[str] = []
    for result in script:
        expected: list[Event] = []
        if not closed:
            expected_calls.append(names[index])
            if result is True and index + 1 < steps:
                expected = [StepChanged(names[index], names[index + 1], index + 1)]
                index += 1
            elif result is True:
                expected = [FlowCompleted(names[index]), CloseRequested(1000, "flow complete")]
                closed = True
            elif isinstance(result, Goto):
                target = names.index(result.step)
                expected = [StepChanged(names[index], result.step, target)]
                index = target
            elif isinstance(result, Close):
                expected = [CloseRequested(result.code, result.reason)]
                closed = True
        assert stepper.receive(b"m", 1.0) == expected
        assert stepper.step == names[index]
        assert stepper.phase is (State.CLOSING if closed else State.OPEN)
    assert calls == expected_calls


# -- ordering with any mix of sync and async handling ------------------------------


@FAST
@given(
    st.lists(st.tuples(st.binary(max_size=3), st.booleans(), st.booleans()), max_size=40),
    st.integers(1, 4),
)
def test_messages_are_handled_in_arrival_order(
    plan: list[tuple[bytes, bool, bool]], max_queue: int
) -> None:
    """Each message: (payload, handle it asynchronously?, settle pending work first?)."""
    handled: list[bytes] = []
    asynchronous = {index for index, (_, is_async, _) in enumerate(plan) if is_async}
    count = [0]

    def handler(conn: Any, message: bytes) -> Any:
        position = count[0]
        count[0] += 1

        async def later() -> bool:
            handled.append(message)
            conn.send(message)
            return False

        if position in asynchronous:
            return later()
        handled.append(message)
        conn.send(message)
        return False

    stepper = Stepper(_flow_of(handler), max_queue=max_queue)
    pending: list[Await] = []
    sent: list[bytes] = []

    def take(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Await):
                pending.append(event)
            elif isinstance(event, Send):
                sent.append(event.data)

    def settle() -> None:
        await_event = pending.pop(0)
        result = resolve(await_event.awaitable)
        take(stepper.pending_events())
        take(stepper.resume(await_event.token, result, 0.0))

    take(stepper.open(0.0))
    for payload, _, settle_first in plan:
        if settle_first and pending:
            settle()
        while not stepper.accepting:
            settle()
        assert stepper.accepting == (
            stepper.phase is not State.AWAITING or stepper.queued < max_queue
        )
        take(stepper.receive(payload, 0.0))
        assert len(pending) <= 1
    while pending:
        settle()
    payloads = [payload for payload, _, _ in plan]
    assert handled == payloads
    assert sent == payloads
    assert stepper.queued == 0


def _flow_of(handler: Any) -> Flow:
    flow = Flow("order")
    flow.add(handler, name="only")
    return flow


# -- time ------------------------------------------------------------------------------


@FAST
@given(
    start=st.floats(-1e9, 1e9, allow_nan=False),
    timeout=st.floats(1e-3, 1e4, allow_nan=False),
    ticks=st.lists(st.floats(0, 2e4, allow_nan=False), max_size=10),
)
def test_a_step_times_out_at_the_first_tick_past_its_deadline(
    start: float, timeout: float, ticks: list[float]
) -> None:
    flow = Flow("t")
    flow.add(lambda conn, message: False, name="wait", timeout=timeout)
    stepper = Stepper(flow)
    stepper.open(start)
    deadline = start + timeout
    assert stepper.next_deadline == deadline
    for offset in sorted(ticks):
        now = start + offset
        was_open = stepper.phase is State.OPEN
        events = stepper.tick(now)
        if was_open and now >= deadline:
            assert [type(e) for e in events] == [CloseRequested]
            assert events[0] == CloseRequested(4408, f"step 'wait' timed out after {timeout:g}s")
        else:
            assert events == []
    closed = any(start + offset >= deadline for offset in ticks)
    assert (stepper.close_code == 4408) is closed
    assert (stepper.next_deadline is None) is closed


# -- the queue bound ------------------------------------------------------------------


@FAST
@given(max_queue=st.integers(1, 8), arrivals=st.integers(0, 20))
def test_the_wait_queue_holds_exactly_max_queue_messages(max_queue: int, arrivals: int) -> None:
    async def slow(conn: Any, message: bytes) -> bool:
        return False

    stepper = Stepper(_flow_of(slow), max_queue=max_queue)
    stepper.open(0.0)
    first = stepper.receive(b"first", 0.0)[0]
    assert isinstance(first, Await)
    refused = 0
    for n in range(arrivals):
        assert stepper.accepting == (n < max_queue)
        try:
            assert stepper.receive(b"%d" % n, 0.0) == []
        except QueueFullError:
            refused += 1
    assert stepper.queued == min(arrivals, max_queue)
    assert refused == max(0, arrivals - max_queue)
    first.awaitable.close()  # type: ignore[attr-defined]


# -- determinism ---------------------------------------------------------------------


@FAST
@given(st.lists(st.tuples(st.binary(max_size=4), st.floats(0, 3, allow_nan=False)), max_size=20))
def test_the_same_calls_give_the_same_events(calls: list[tuple[bytes, float]]) -> None:
    def run() -> list[Event]:
        flow = Flow("d")

        @flow.step(timeout=5.0)
        def first(conn: Any, message: bytes) -> Any:
            conn.send(message[::-1])
            return Goto("second") if message[:1] == b"g" else bool(message) and message[0] > 200

        @flow.step(timeout=2.0)
        def second(conn: Any, message: bytes) -> Any:
            return Close(4000) if message == b"" else Goto("first")

        stepper = Stepper(flow)
        log = stepper.open(0.0)
        now = 0.0
        for message, delay in calls:
            now += delay
            if stepper.phase is State.OPEN:
                log += stepper.receive(message, now)
            log += stepper.tick(now)
        return log + stepper.transport_closed(1006, "", now)

    assert run() == run()


# -- the invariants fuzz_flow checks, on assorted flows ---------------------------------


def sync_chain() -> Flow:
    flow = Flow("sync")
    flow.add(lambda conn, message: message == b"go", name="a", timeout=3.0)
    flow.add(lambda conn, message: Goto("a") if message == b"back" else True, name="b")
    return flow


def async_everything() -> Flow:
    flow = Flow("async")

    @flow.on_open
    async def greet(conn: Any) -> None:
        conn.send(b"hello")

    @flow.step(timeout=2.0)
    async def first(conn: Any, message: bytes) -> Any:
        conn.send(message)
        if message == b"close":
            conn.close(3001, "asked")
        return message == b"go"

    @flow.step
    async def second(conn: Any, message: bytes) -> Any:
        return Close(4001) if message == b"bye" else False

    @flow.on_close
    async def farewell(conn: Any) -> None:
        conn.state.bye = True

    return flow


def hooks_that_close() -> Flow:
    flow = Flow("hooks")

    @flow.on_open
    def maybe(conn: Any) -> None:
        conn.send(b"x")

    @flow.on_open
    async def refuse_later(conn: Any) -> Close | None:
        return None

    flow.add(lambda conn, message: None, name="stay")

    @flow.on_close
    def first(conn: Any) -> None:
        pass

    @flow.on_close
    def second(conn: Any) -> None:
        pass

    return flow


@pytest.mark.parametrize("make", [sync_chain, async_everything, hooks_that_close])
def test_assorted_flows_keep_every_invariant(make: Any) -> None:
    stats = fuzz_flow(make(), messages=[b"go", b"back", b"close", b"bye"], max_examples=80, seed=11)
    assert stats.runs >= 80
    assert set(stats.close_codes) >= {1006}
