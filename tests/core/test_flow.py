"""Flow definition: names, signatures, timeouts, results."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from socker_core import (
    Close,
    Flow,
    FlowDefinitionError,
    Goto,
    LocalProtocolError,
    Step,
    Stepper,
)


def stay(conn: Any, message: bytes) -> bool:
    return False


def test_add_returns_the_step_and_names_it_after_the_function() -> None:
    flow = Flow("f")
    step = flow.add(stay)
    assert step == Step("stay", stay, None)
    assert flow.steps == (step,)
    assert len(flow) == 1
    assert flow.index_of("stay") == 0
    assert flow.index_of("missing") is None


def test_lambdas_and_partials_get_positional_names() -> None:
    flow = Flow("f")
    flow.add(lambda conn, message: False)
    flow.add(functools.partial(lambda extra, conn, message: False, 1))
    flow.add(stay, name="named")
    assert [s.name for s in flow.steps] == ["step0", "step1", "named"]


def test_decorator_forms_register_and_return_the_function() -> None:
    flow = Flow("f")

    @flow.step
    def plain(conn: Any, message: bytes) -> bool:
        return True

    @flow.step(name="custom", timeout=2.5)
    def configured(conn: Any, message: bytes) -> bool:
        return True

    assert plain.__name__ == "plain"
    assert configured.__name__ == "configured"
    assert [(s.name, s.timeout) for s in flow.steps] == [("plain", None), ("custom", 2.5)]


def test_duplicate_step_names_are_refused() -> None:
    flow = Flow("f")
    flow.add(stay)
    with pytest.raises(FlowDefinitionError, match="already has a step named 'stay'"):
        flow.add(stay)
    with pytest.raises(FlowDefinitionError):

        @flow.step(name="stay")
        def other(conn: Any, message: bytes) -> bool:
            return False

    assert len(flow) == 1


def test_a_non_string_name_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="string"):
        Flow("f").add(stay, name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "handler",
    [
        lambda: False,
        lambda conn: False,
        lambda conn, message, extra: False,
        lambda *, conn, message: False,
    ],
)
def test_handlers_with_the_wrong_arity_are_refused(handler: Any) -> None:
    with pytest.raises(FlowDefinitionError, match="cannot be called with 2"):
        Flow("f").add(handler)


def test_flexible_signatures_are_accepted() -> None:
    flow = Flow("f")
    flow.add(lambda *args: False)
    flow.add(lambda conn, message, extra=None: False)  # type: ignore[misc]

    class Handler:
        def __call__(self, conn: Any, message: bytes) -> bool:
            return False

        def method(self, conn: Any, message: bytes) -> bool:
            return False

    flow.add(Handler(), name="callable")
    flow.add(Handler().method)
    assert len(flow) == 4


def test_non_callables_are_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="callable"):
        Flow("f").add("not a function")  # type: ignore[arg-type]
    with pytest.raises(FlowDefinitionError, match="callable"):
        Flow("f").on_close(None)  # type: ignore[type-var]


def test_hooks_with_the_wrong_arity_are_refused() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="on_open hook"):
        flow.on_open(lambda conn, message: None)  # type: ignore[type-var]
    with pytest.raises(FlowDefinitionError, match="on_close hook"):
        flow.on_close(lambda: None)  # type: ignore[type-var]
    assert flow.open_hooks == [] and flow.close_hooks == []


def test_an_empty_flow_cannot_run() -> None:
    flow = Flow("empty")
    with pytest.raises(FlowDefinitionError, match="no steps"):
        flow.validate()
    with pytest.raises(FlowDefinitionError, match="no steps"):
        Stepper(flow)


@pytest.mark.parametrize("timeout", [0, 0.0, -1, float("nan"), float("-inf")])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    with pytest.raises(FlowDefinitionError, match="timeout must be positive"):
        Flow("f").add(stay, timeout=timeout)
    with pytest.raises(FlowDefinitionError, match="timeout must be positive"):
        Flow("g", step_timeout=timeout).add(stay)


def test_definition_errors_are_local_protocol_errors() -> None:
    assert issubclass(FlowDefinitionError, LocalProtocolError)


def test_close_validates_code_and_reason() -> None:
    assert Close() == Close(1000, "")
    assert Close(3000).code == 3000
    assert Close(4999, "é" * 61).reason == "é" * 61  # 122 bytes
    for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError):
            Close(code)
    with pytest.raises(ValueError, match="123 bytes"):
        Close(1000, "é" * 62)


def test_results_are_frozen_values() -> None:
    assert Goto("a") == Goto("a")
    with pytest.raises(AttributeError):
        Goto("a").step = "b"  # type: ignore[misc]


def test_flow_repr_and_mermaid() -> None:
    flow = Flow("game")
    flow.add(stay, name="hello")
    flow.add(stay, name="play", timeout=5)
    assert repr(flow) == "Flow('game', steps=['hello', 'play'])"
    assert flow.mermaid().splitlines() == [
        "stateDiagram-v2",
        '    state "hello" as s0',
        '    state "play (timeout 5s)" as s1',
        "    [*] --> s0: open",
        "    s0 --> s0: False (stay)",
        "    s0 --> s1: True",
        "    s1 --> s1: False (stay)",
        "    s1 --> [*]: True (close 1000)",
    ]


def test_one_flow_serves_many_connections_independently() -> None:
    flow = Flow("f")

    @flow.step
    def count(conn: Any, message: bytes) -> bool:
        conn.state.n = getattr(conn.state, "n", 0) + 1
        return bool(conn.state.n == 2)

    flow.add(stay, name="after")
    first, second = Stepper(flow), Stepper(flow)
    first.open(0.0)
    second.open(0.0)
    first.receive(b"", 0.0)
    first.receive(b"", 0.0)
    second.receive(b"", 0.0)
    assert (first.step, second.step) == ("after", "count")
