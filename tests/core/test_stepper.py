"""Stepper unit tests: feed messages and `now`, assert events."""

from __future__ import annotations

from typing import Any

import pytest

from socker_core import (
    DEFAULT_MAX_QUEUE,
    ON_CLOSE,
    ON_OPEN,
    Await,
    CancelAwait,
    Close,
    Closed,
    CloseRequested,
    ConnectionClosedError,
    Flow,
    FlowCompleted,
    Goto,
    HandlerError,
    HandlerFailed,
    LocalProtocolError,
    QueueFullError,
    Send,
    State,
    StepChanged,
    Stepper,
)
from socker_core.testing import resolve


def chain(*handlers: Any, timeout: float | None = None, name: str = "t") -> Flow:
    flow = Flow(name)
    for index, handler in enumerate(handlers):
        flow.add(handler, name="abcdefgh"[index], timeout=timeout)
    return flow


def stay(conn: Any, message: bytes) -> bool:
    return False


def advance(conn: Any, message: bytes) -> bool:
    return True


def phase(stepper: Stepper) -> State:
    """The phase, read through a call so that type checkers do not narrow it."""
    return stepper.phase


def opened(flow: Flow, now: float = 0.0, **kwargs: Any) -> Stepper:
    stepper = Stepper(flow, **kwargs)
    stepper.open(now)
    return stepper


# -- opening and the original's semantics --------------------------------------


def test_open_enters_the_first_step() -> None:
    stepper = Stepper(chain(stay, stay))
    assert phase(stepper) is State.IDLE
    assert stepper.open(0.0) == [StepChanged(None, "a", 0)]
    assert phase(stepper) is State.OPEN
    assert stepper.step == "a"
    assert stepper.step_index == 0


def test_handlers_are_called_in_order_false_stays_true_moves_on() -> None:
    calls: list[tuple[str, bytes]] = []

    def make(name: str) -> Any:
        def handler(conn: Any, message: bytes) -> bool | None:
            calls.append((name, message))
            if message == b"next":
                return True
            return None if message == b"none" else False

        return handler

    stepper = opened(chain(make("a"), make("b"), make("c")))
    assert stepper.receive(b"stay", 1.0) == []
    assert stepper.receive(b"none", 1.0) == []
    assert stepper.step == "a"
    assert stepper.receive(b"next", 1.0) == [StepChanged("a", "b", 1)]
    assert stepper.receive(b"stay", 1.0) == []
    assert stepper.receive(b"next", 1.0) == [StepChanged("b", "c", 2)]
    assert stepper.receive(b"x", 1.0) == []
    assert calls == [
        ("a", b"stay"),
        ("a", b"none"),
        ("a", b"next"),
        ("b", b"stay"),
        ("b", b"next"),
        ("c", b"x"),
    ]


def test_true_from_the_last_step_completes_with_1000() -> None:
    # The Go original returned "out of range" (client) or panicked (server) here.
    stepper = opened(chain(advance, advance))
    assert stepper.receive(b"1", 0.0) == [StepChanged("a", "b", 1)]
    assert stepper.receive(b"2", 0.0) == [
        FlowCompleted("b"),
        CloseRequested(1000, "flow complete"),
    ]
    assert stepper.phase is State.CLOSING
    assert stepper.transport_closed(1000, "flow complete", 0.0) == [
        Closed(1000, "flow complete", True)
    ]
    assert stepper.is_closed
    assert stepper.close_code == 1000


def test_conn_exposes_step_state_and_close_info() -> None:
    seen: list[str] = []

    def first(conn: Any, message: bytes) -> bool:
        conn.state.count = getattr(conn.state, "count", 0) + 1
        seen.append(conn.step)
        return bool(conn.state.count == 2)

    def second(conn: Any, message: bytes) -> Close:
        seen.append(conn.step)
        assert conn.is_open
        return Close(4000, "done")

    stepper = opened(chain(first, second))
    stepper.receive(b"", 0.0)
    stepper.receive(b"", 0.0)
    stepper.receive(b"", 0.0)
    assert seen == ["a", "a", "b"]
    assert stepper.conn.close_code == 4000
    assert stepper.conn.close_reason == "done"
    assert not stepper.conn.is_open
    assert "flow='t'" in repr(stepper.conn)


def test_server_cannot_speak_first_without_on_open_but_can_with_it() -> None:
    # What the Go code got wrong: its open handler was never called.
    silent = Flow("go-like")
    silent.add(stay, name="wait")
    assert Stepper(silent).open(0.0) == [StepChanged(None, "wait", 0)]

    speaking = Flow("socker")
    speaking.add(stay, name="wait")

    @speaking.on_open
    def hello(conn: Any) -> None:
        conn.send(b"scene")

    assert Stepper(speaking).open(0.0) == [StepChanged(None, "wait", 0), Send(b"scene")]


# -- results: Goto, Close, bad values ------------------------------------------


def test_goto_jumps_to_a_named_step() -> None:
    def jump(conn: Any, message: bytes) -> Goto:
        return Goto("c")

    stepper = opened(chain(jump, stay, stay))
    assert stepper.receive(b"", 0.0) == [StepChanged("a", "c", 2)]
    assert stepper.step == "c"


def test_goto_to_a_missing_step_closes_1011() -> None:
    def jump(conn: Any, message: bytes) -> Goto:
        return Goto("nowhere")

    events = opened(chain(jump, stay)).receive(b"", 0.0)
    assert [type(e) for e in events] == [HandlerFailed, CloseRequested]
    failed = events[0]
    assert isinstance(failed, HandlerFailed)
    assert failed.step == "a"
    assert isinstance(failed.exception, HandlerError)
    assert "nowhere" in str(failed.exception)
    assert events[1] == CloseRequested(1011, "internal error")


def test_goto_to_a_step_added_after_the_stepper_was_made_closes_1011() -> None:
    def jump(conn: Any, message: bytes) -> Goto:
        return Goto("late")

    flow = chain(jump)
    stepper = opened(flow)
    flow.add(stay, name="late")  # the Stepper keeps the steps it started with
    events = stepper.receive(b"", 0.0)
    assert events[-1] == CloseRequested(1011, "internal error")
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, HandlerError)


@pytest.mark.parametrize("bad", [1, 0, "yes", b"", 2.0, object()])
def test_a_bad_return_value_closes_1011(bad: object) -> None:
    def handler(conn: Any, message: bytes) -> Any:
        return bad

    events = opened(chain(handler)).receive(b"", 0.0)
    assert [type(e) for e in events] == [HandlerFailed, CloseRequested]
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, HandlerError)
    assert events[1] == CloseRequested(1011, "internal error")


def test_a_raising_handler_closes_1011_and_keeps_the_exception_private() -> None:
    boom = RuntimeError("secret database password")

    def handler(conn: Any, message: bytes) -> bool:
        raise boom

    stepper = opened(chain(handler))
    events = stepper.receive(b"", 0.0)
    assert events == [HandlerFailed("a", boom), CloseRequested(1011, "internal error")]
    assert "secret" not in stepper.close_reason


def test_close_result_closes_with_the_users_code() -> None:
    def handler(conn: Any, message: bytes) -> Close:
        return Close(4001, "go away")

    stepper = opened(chain(handler))
    assert stepper.receive(b"", 0.0) == [CloseRequested(4001, "go away")]
    assert stepper.transport_closed(4001, "go away", 0.0) == [Closed(4001, "go away", True)]


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 2999, 5000])
def test_close_refuses_codes_that_cannot_be_sent(code: int) -> None:
    with pytest.raises(ValueError):
        Close(code)
    stepper = opened(chain(stay))
    with pytest.raises(LocalProtocolError):
        stepper.close(code, "", 0.0)
    assert stepper.phase is State.OPEN  # nothing happened
    with pytest.raises(LocalProtocolError):
        stepper.close(1000, "x" * 124, 0.0)
    assert stepper.phase is State.OPEN


def test_handler_closing_itself_then_advancing_stays_closed() -> None:
    def handler(conn: Any, message: bytes) -> bool:
        conn.close(4002, "mine")
        return True

    assert opened(chain(handler, stay)).receive(b"", 0.0) == [CloseRequested(4002, "mine")]


def test_conn_close_with_a_bad_code_in_a_handler_closes_1011() -> None:
    def handler(conn: Any, message: bytes) -> bool:
        conn.close(1005)
        return True

    events = opened(chain(handler)).receive(b"", 0.0)
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, LocalProtocolError)
    assert events[1] == CloseRequested(1011, "internal error")


# -- the close codes the core owns ----------------------------------------------


def test_stepper_close_sends_1001_and_ignores_later_messages() -> None:
    stepper = opened(chain(stay))
    assert stepper.close(1001, "server shutting down", 1.0) == [
        CloseRequested(1001, "server shutting down")
    ]
    assert stepper.phase is State.CLOSING
    assert stepper.receive(b"late", 1.0) == []
    assert stepper.tick(99.0) == []
    assert stepper.close(1000, "again", 1.0) == []
    assert stepper.transport_closed(1001, "server shutting down", 2.0) == [
        Closed(1001, "server shutting down", True)
    ]


def test_step_timeout_closes_4408_on_a_fake_clock() -> None:
    stepper = opened(chain(stay, timeout=5.0), now=100.0)
    assert stepper.next_deadline == 105.0
    assert stepper.tick(104.999) == []
    assert stepper.receive(b"", 104.999) == []  # staying does not reset the clock
    assert stepper.next_deadline == 105.0
    events = stepper.tick(105.0)
    assert events == [CloseRequested(4408, "step 'a' timed out after 5s")]
    assert stepper.next_deadline is None
    assert stepper.transport_closed(4408, "", 105.0) == [
        Closed(4408, "step 'a' timed out after 5s", True)
    ]


def test_a_message_at_the_deadline_is_not_handled() -> None:
    calls: list[bytes] = []

    def handler(conn: Any, message: bytes) -> bool:
        calls.append(message)
        return False

    stepper = opened(chain(handler, timeout=1.0))
    assert stepper.receive(b"late", 1.0) == [CloseRequested(4408, "step 'a' timed out after 1s")]
    assert calls == []


def test_the_timeout_restarts_when_a_step_is_entered() -> None:
    stepper = opened(chain(advance, stay, timeout=2.0))
    assert stepper.receive(b"", 1.5) == [StepChanged("a", "b", 1)]
    assert stepper.next_deadline == 3.5
    assert stepper.tick(3.0) == []
    assert stepper.tick(3.5)[0] == CloseRequested(4408, "step 'b' timed out after 2s")


def test_flow_wide_step_timeout_and_per_step_override() -> None:
    flow = Flow("f", step_timeout=3.0)
    flow.add(advance, name="a")
    flow.add(stay, name="b", timeout=10.0)
    stepper = opened(flow)
    assert stepper.next_deadline == 3.0
    stepper.receive(b"", 1.0)
    assert stepper.next_deadline == 11.0


def test_no_timeout_means_no_deadline() -> None:
    stepper = opened(chain(stay))
    assert stepper.next_deadline is None
    assert stepper.tick(1e12) == []


def test_transport_lost_reports_1006_remote() -> None:
    stepper = opened(chain(stay))
    assert stepper.transport_closed(1006, "", 0.0) == [Closed(1006, "", False)]
    assert stepper.transport_closed(1006, "", 0.0) == []  # once only


# -- async handlers: ordering, queueing, resume ---------------------------------


def test_async_handler_awaits_then_messages_queue_in_order_and_drain() -> None:
    handled: list[tuple[str, bytes]] = []

    async def slow(conn: Any, message: bytes) -> bool:
        handled.append(("a", message))
        return True

    def record(conn: Any, message: bytes) -> bool:
        handled.append(("b", message))
        conn.send(message.upper())
        return False

    stepper = opened(chain(slow, record))
    events = stepper.receive(b"first", 1.0)
    assert len(events) == 1
    pending = events[0]
    assert isinstance(pending, Await)
    assert pending.step == "a"
    assert stepper.phase is State.AWAITING
    assert stepper.receive(b"second", 1.0) == []
    assert stepper.receive(b"third", 1.0) == []
    assert stepper.queued == 2
    assert handled == []  # nothing runs until the driver awaits
    result = resolve(pending.awaitable)
    assert stepper.resume(pending.token, result, 2.0) == [
        StepChanged("a", "b", 1),
        Send(b"SECOND"),
        Send(b"THIRD"),
    ]
    assert handled == [("a", b"first"), ("b", b"second"), ("b", b"third")]
    assert stepper.queued == 0
    assert phase(stepper) is State.OPEN


def test_draining_stops_at_the_next_async_handler() -> None:
    async def slow(conn: Any, message: bytes) -> bool:
        return False

    stepper = opened(chain(slow))
    first = stepper.receive(b"1", 0.0)[0]
    stepper.receive(b"2", 0.0)
    stepper.receive(b"3", 0.0)
    assert isinstance(first, Await)
    events = stepper.resume(first.token, resolve(first.awaitable), 0.0)
    assert len(events) == 1
    second = events[0]
    assert isinstance(second, Await)
    assert second.token > first.token
    assert stepper.queued == 1  # "3" still waits behind "2"
    resolve(second.awaitable)
    third = stepper.resume(second.token, False, 0.0)[0]
    assert isinstance(third, Await)
    assert stepper.queued == 0
    for awaitable in (third.awaitable,):
        resolve(awaitable)


def test_sends_made_while_an_async_handler_runs_land_in_pending_events() -> None:
    woken: list[int] = []

    async def handler(conn: Any, message: bytes) -> bool:
        conn.send(b"from inside")
        return True

    stepper = opened(chain(handler, stay))
    stepper.wakeup = lambda: woken.append(1)
    pending = stepper.receive(b"", 0.0)[0]
    assert isinstance(pending, Await)
    result = resolve(pending.awaitable)
    assert woken == [1]
    assert stepper.pending_events() == [Send(b"from inside")]
    assert stepper.pending_events() == []
    assert stepper.resume(pending.token, result, 0.0) == [StepChanged("a", "b", 1)]


def test_resume_error_closes_1011() -> None:
    async def handler(conn: Any, message: bytes) -> bool:
        return True

    stepper = opened(chain(handler))
    pending = stepper.receive(b"", 0.0)[0]
    assert isinstance(pending, Await)
    pending.awaitable.close()  # type: ignore[attr-defined]
    error = OSError("lost")
    assert stepper.resume_error(pending.token, error, 0.0) == [
        HandlerFailed("a", error),
        CloseRequested(1011, "internal error"),
    ]


def test_an_async_handler_resolving_to_an_awaitable_closes_1011() -> None:
    async def handler(conn: Any, message: bytes) -> Any:
        return None

    stepper = opened(chain(handler))
    pending = stepper.receive(b"", 0.0)[0]
    assert isinstance(pending, Await)
    inner = handler(None, b"")
    events = stepper.resume(pending.token, inner, 0.0)
    inner.close()
    resolve(pending.awaitable)
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, HandlerError)
    assert events[-1] == CloseRequested(1011, "internal error")


def test_resume_misuse_is_a_local_error() -> None:
    async def handler(conn: Any, message: bytes) -> bool:
        return False

    stepper = opened(chain(handler))
    with pytest.raises(LocalProtocolError, match="cannot resume"):
        stepper.resume(1, None, 0.0)
    pending = stepper.receive(b"", 0.0)[0]
    assert isinstance(pending, Await)
    with pytest.raises(LocalProtocolError, match="pending token"):
        stepper.resume(pending.token + 1, None, 0.0)
    assert stepper.phase is State.AWAITING
    resolve(pending.awaitable)


def test_timeout_while_awaiting_cancels_the_await() -> None:
    async def handler(conn: Any, message: bytes) -> bool:
        return True

    stepper = opened(chain(handler, timeout=1.0))
    pending = stepper.receive(b"", 0.5)[0]
    assert isinstance(pending, Await)
    stepper.receive(b"queued", 0.6)
    assert stepper.tick(1.0) == [
        CancelAwait(pending.token),
        CloseRequested(4408, "step 'a' timed out after 1s"),
    ]
    assert stepper.queued == 0
    assert stepper.resume(pending.token, True, 1.1) == []  # too late: ignored
    pending.awaitable.close()  # type: ignore[attr-defined]


def test_transport_lost_while_awaiting_cancels_and_closes() -> None:
    async def handler(conn: Any, message: bytes) -> bool:
        return True

    stepper = opened(chain(handler))
    pending = stepper.receive(b"", 0.0)[0]
    assert isinstance(pending, Await)
    assert stepper.transport_closed(1006, "", 0.0) == [
        CancelAwait(pending.token),
        Closed(1006, "", False),
    ]
    assert stepper.resume(pending.token, True, 0.0) == []
    pending.awaitable.close()  # type: ignore[attr-defined]


def test_async_on_open_hook_queues_messages_until_it_resumes() -> None:
    order: list[str] = []
    flow = Flow("f")

    @flow.on_open
    async def greet(conn: Any) -> None:
        order.append("hook")
        conn.send(b"hello")

    @flow.step
    def first(conn: Any, message: bytes) -> bool:
        order.append(message.decode())
        return False

    stepper = Stepper(flow)
    events = stepper.open(0.0)
    assert events[0] == StepChanged(None, "first", 0)
    pending = events[1]
    assert isinstance(pending, Await)
    assert pending.step == ON_OPEN
    assert stepper.receive(b"m1", 0.0) == []
    resolve(pending.awaitable)
    assert stepper.pending_events() == [Send(b"hello")]
    assert stepper.resume(pending.token, None, 0.0) == []
    assert order == ["hook", "m1"]


def test_async_on_open_resolving_to_close_closes() -> None:
    flow = chain(stay)

    @flow.on_open
    async def refuse(conn: Any) -> Close:
        return Close(4003, "full")

    stepper = Stepper(flow)
    pending = stepper.open(0.0)[1]
    assert isinstance(pending, Await)
    assert stepper.resume(pending.token, resolve(pending.awaitable), 0.0) == [
        CloseRequested(4003, "full")
    ]


def test_on_open_hook_raising_or_closing() -> None:
    raising = chain(stay)

    @raising.on_open
    def boom(conn: Any) -> None:
        raise KeyError("x")

    events = Stepper(raising).open(0.0)
    assert isinstance(events[1], HandlerFailed)
    assert events[1].step == ON_OPEN
    assert events[2] == CloseRequested(1011, "internal error")

    closing = chain(stay)
    later: list[str] = []

    @closing.on_open
    def refuse(conn: Any) -> Close:
        return Close(4004, "no")

    @closing.on_open
    def never(conn: Any) -> None:
        later.append("ran")

    assert Stepper(closing).open(0.0)[1:] == [CloseRequested(4004, "no")]
    assert later == []


# -- the wait queue ---------------------------------------------------------------


def test_queue_overflow_raises_and_accepting_turns_false() -> None:
    async def handler(conn: Any, message: bytes) -> bool:
        return False

    stepper = opened(chain(handler), max_queue=2)
    pending = stepper.receive(b"0", 0.0)[0]
    assert isinstance(pending, Await)
    assert stepper.accepting
    stepper.receive(b"1", 0.0)
    assert stepper.accepting
    stepper.receive(b"2", 0.0)
    assert not stepper.accepting
    with pytest.raises(QueueFullError, match="accepting"):
        stepper.receive(b"3", 0.0)
    assert stepper.queued == 2  # the refused message was not kept
    resolve(pending.awaitable)
    events = stepper.resume(pending.token, False, 0.0)  # "1" runs: awaiting again, 1 queued
    assert stepper.accepting
    assert stepper.queued == 1
    again = events[0]
    assert isinstance(again, Await)
    assert stepper.close(1000, "", 0.0) == [CancelAwait(again.token), CloseRequested(1000, "")]
    again.awaitable.close()


def test_max_queue_must_be_positive_and_has_a_default() -> None:
    assert DEFAULT_MAX_QUEUE >= 1
    assert Stepper(chain(stay)).max_queue == DEFAULT_MAX_QUEUE
    with pytest.raises(LocalProtocolError):
        Stepper(chain(stay), max_queue=0)


# -- on_close: exactly once, in every ending -------------------------------------


def _async_step(conn: Any, message: bytes) -> Any:
    async def work() -> bool:
        return True

    return work()


def _ending_complete(stepper: Stepper) -> None:
    stepper.receive(b"done", 0.0)


def _ending_raise(stepper: Stepper) -> None:
    stepper.receive(b"raise", 0.0)


def _ending_bad_goto(stepper: Stepper) -> None:
    stepper.receive(b"goto", 0.0)


def _ending_close_result(stepper: Stepper) -> None:
    stepper.receive(b"close", 0.0)


def _ending_timeout(stepper: Stepper) -> None:
    stepper.tick(60.0)


def _ending_app_close(stepper: Stepper) -> None:
    stepper.close(1001, "bye", 0.0)


def _ending_lost(stepper: Stepper) -> None:
    pass  # only transport_closed below


def _ending_lost_awaiting(stepper: Stepper) -> None:
    pending = stepper.receive(b"async", 0.0)[0]
    assert isinstance(pending, Await)
    pending.awaitable.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "ending",
    [
        _ending_complete,
        _ending_raise,
        _ending_bad_goto,
        _ending_close_result,
        _ending_timeout,
        _ending_app_close,
        _ending_lost,
        _ending_lost_awaiting,
    ],
)
def test_on_close_runs_exactly_once_in_every_ending(ending: Any) -> None:
    ran: list[int | None] = []

    def handler(conn: Any, message: bytes) -> Any:
        if message == b"raise":
            raise ValueError("x")
        if message == b"goto":
            return Goto("missing")
        if message == b"close":
            return Close(4005)
        if message == b"async":
            return _async_step(conn, message)
        return message == b"done"

    flow = chain(handler, timeout=30.0)

    @flow.on_close
    def cleanup(conn: Any) -> None:
        ran.append(conn.close_code)

    stepper = opened(flow)
    ending(stepper)
    assert ran == []  # not before the transport is gone
    events = stepper.transport_closed(1006, "", 70.0)
    assert isinstance(events[-1], Closed)
    assert stepper.transport_closed(1006, "", 71.0) == []
    assert len(ran) == 1
    assert ran[0] == events[-1].code


def test_on_close_does_not_run_for_a_connection_that_never_opened() -> None:
    ran: list[str] = []
    flow = chain(stay)

    @flow.on_close
    def cleanup(conn: Any) -> None:
        ran.append("x")

    lost = Stepper(flow)
    assert lost.transport_closed(1006, "", 0.0) == [Closed(1006, "", False)]
    refused = Stepper(flow)
    assert refused.close(1001, "shutting down", 0.0) == [CloseRequested(1001, "shutting down")]
    assert refused.transport_closed(1001, "", 0.0) == [Closed(1001, "shutting down", True)]
    assert ran == []


def test_on_close_failures_and_async_hooks_are_reported_before_closed() -> None:
    flow = chain(stay)

    @flow.on_close
    def broken(conn: Any) -> None:
        raise RuntimeError("cleanup failed")

    @flow.on_close
    async def async_cleanup(conn: Any) -> None:
        return None

    @flow.on_close
    def after(conn: Any) -> None:
        conn.state.after = True

    stepper = opened(flow)
    events = stepper.transport_closed(1000, "", 0.0)
    assert [type(e) for e in events] == [HandlerFailed, Await, Closed]
    assert isinstance(events[0], HandlerFailed)
    assert events[0].step == ON_CLOSE
    assert isinstance(events[1], Await)
    assert events[1].step == ON_CLOSE
    assert resolve(events[1].awaitable) is None
    assert stepper.conn.state.after is True
    assert stepper.resume(events[1].token, None, 0.0) == []  # nothing to resume


# -- misuse: re-entrancy, sends after close, wrong states ------------------------


def test_calling_the_stepper_from_a_handler_is_a_reentrancy_error() -> None:
    holder: list[Stepper] = []

    def handler(conn: Any, message: bytes) -> bool:
        holder[0].receive(b"nested", 0.0)
        return True

    stepper = opened(chain(handler, stay))
    holder.append(stepper)
    events = stepper.receive(b"", 0.0)
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, LocalProtocolError)
    assert "nested" in str(events[0].exception)
    assert events[1] == CloseRequested(1011, "internal error")


def test_stepper_send_from_a_handler_is_a_reentrancy_error_but_conn_send_is_fine() -> None:
    holder: list[Stepper] = []

    def good(conn: Any, message: bytes) -> bool:
        conn.send(b"ok")
        return True

    def bad(conn: Any, message: bytes) -> bool:
        holder[0].send(b"no", 0.0)
        return True

    stepper = opened(chain(good, bad))
    holder.append(stepper)
    assert stepper.receive(b"", 0.0) == [Send(b"ok"), StepChanged("a", "b", 1)]
    events = stepper.receive(b"", 0.0)
    assert isinstance(events[0], HandlerFailed)
    assert isinstance(events[0].exception, LocalProtocolError)


def test_sends_after_close_raise_connection_closed() -> None:
    stepper = opened(chain(stay))
    stepper.close(4006, "closing", 0.0)
    with pytest.raises(ConnectionClosedError) as info:
        stepper.send(b"late", 0.0)
    assert info.value.code == 4006
    assert info.value.reason == "closing"
    with pytest.raises(ConnectionClosedError):
        stepper.conn.send(b"late")
    stepper.transport_closed(4006, "closing", 0.0)
    for call in (
        lambda: stepper.send(b"x", 0.0),
        lambda: stepper.conn.send(b"x"),
        lambda: stepper.receive(b"x", 0.0),
        lambda: stepper.open(0.0),
    ):
        with pytest.raises(ConnectionClosedError):
            call()


def test_a_handler_sending_after_closing_itself_fails_but_keeps_its_code() -> None:
    def handler(conn: Any, message: bytes) -> bool:
        conn.close(4007, "first")
        conn.send(b"too late")
        return False

    stepper = opened(chain(handler))
    events = stepper.receive(b"", 0.0)
    assert events[0] == CloseRequested(4007, "first")
    assert isinstance(events[1], HandlerFailed)
    assert isinstance(events[1].exception, ConnectionClosedError)
    assert stepper.close_code == 4007


def test_calls_in_the_wrong_state_are_local_errors_not_closed_errors() -> None:
    stepper = Stepper(chain(stay))
    for call in (
        lambda: stepper.receive(b"", 0.0),
        lambda: stepper.send(b"", 0.0),
        lambda: stepper.conn.send(b""),
        lambda: stepper.resume(1, None, 0.0),
    ):
        with pytest.raises(LocalProtocolError) as info:
            call()
        assert not isinstance(info.value, ConnectionClosedError)
    assert stepper.tick(5.0) == []
    stepper.open(0.0)
    with pytest.raises(LocalProtocolError, match="cannot open"):
        stepper.open(0.0)


def test_send_accepts_bytes_like_and_snapshots_it() -> None:
    stepper = opened(chain(stay))
    buffer = bytearray(b"abc")
    events = stepper.send(buffer, 0.0)  # type: ignore[arg-type]
    buffer[0:3] = b"xyz"
    assert events == [Send(b"abc")]
    assert type(events[0].data) is bytes  # type: ignore[union-attr]
    assert stepper.send(memoryview(b"mv"), 0.0) == [Send(b"mv")]  # type: ignore[arg-type]
    assert stepper.send("text", 0.0) == [Send("text")]  # a text message
    with pytest.raises(TypeError):
        stepper.send(42, 0.0)  # type: ignore[arg-type]


def test_same_calls_give_the_same_events() -> None:
    def run() -> list[Any]:
        def handler(conn: Any, message: bytes) -> Any:
            conn.send(message[::-1])
            return Goto("b") if message == b"go" else False

        stepper = opened(chain(handler, stay, timeout=3.0))
        log: list[Any] = []
        for message, now in [(b"ab", 1.0), (b"go", 2.0), (b"x", 4.0)]:
            log += stepper.receive(message, now)
        log += stepper.tick(10.0)
        log += stepper.transport_closed(1000, "", 10.0)
        return log

    assert run() == run()


def test_connection_id_defaults_unique_and_can_be_given() -> None:
    from socker_core import Flow, LocalProtocolError, Stepper

    flow = Flow("ids")
    flow.add(lambda conn, message: False)
    ids = {Stepper(flow).conn.id for _ in range(1000)}
    assert len(ids) == 1000
    given = Stepper(flow, id="player-7")
    assert given.id == given.conn.id == "player-7"
    assert "player-7" in repr(given.conn)
    with pytest.raises(LocalProtocolError):
        Stepper(flow, id="")
