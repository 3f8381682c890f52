"""on_resume hooks may send the flow back to a step (Goto) or close it: what a
session restored on another worker does to renegotiate what could not move."""

from __future__ import annotations

from socker_core import (
    Close,
    CloseCode,
    CloseRequested,
    Flow,
    Goto,
    HandlerFailed,
    ReplayBuffer,
    StepChanged,
    Stepper,
)


def flow_with(hook: object) -> Flow:
    flow = Flow("f", resume_window=5.0)
    flow.add(lambda conn, m: True, name="signal")
    flow.add(lambda conn, m: False, name="play")
    flow.on_resume(hook)  # type: ignore[arg-type]
    return flow


def resumed(flow: Flow) -> tuple[Stepper, list[object]]:
    stepper = Stepper(flow, replay=ReplayBuffer())
    stepper.open(0.0)
    stepper.receive(b"go", 0.0)
    assert stepper.step == "play"
    stepper.detach(1.0, 5.0)
    return stepper, list(stepper.attach(2.0))


def test_an_on_resume_hook_may_go_back_to_a_step() -> None:
    stepper, events = resumed(flow_with(lambda conn: Goto("signal")))
    assert stepper.step == "signal"
    assert StepChanged("play", "signal", 0) in events


def test_an_on_resume_hook_may_close() -> None:
    stepper, events = resumed(flow_with(lambda conn: Close(4001, "start over")))
    assert CloseRequested(4001, "start over") in events
    assert stepper.close_code == 4001


def test_an_on_resume_goto_to_no_such_step_is_reported_not_raised() -> None:
    stepper, events = resumed(flow_with(lambda conn: Goto("nowhere")))
    assert stepper.step == "play"
    assert any(isinstance(e, HandlerFailed) for e in events)
    assert stepper.close_code is None or stepper.close_code != CloseCode.INTERNAL_ERROR
