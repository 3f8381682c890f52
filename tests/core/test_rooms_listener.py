"""The registry's membership listener and members' presence info: every change of
membership is told, in order, with the connection, the room and the info."""

from __future__ import annotations

import pytest

from socker_core import (
    MAX_INFO_BYTES,
    Connection,
    Flow,
    MemberJoined,
    MemberLeft,
    MembershipEvent,
    Registry,
    Stepper,
)


def _flow() -> Flow:
    flow = Flow("room")

    @flow.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    return flow


def opened(registry: Registry, id: str) -> Stepper:
    stepper = Stepper(_flow(), id=id, registry=registry)
    stepper.open(0.0)
    return stepper


@pytest.fixture
def told() -> tuple[Registry, list[MembershipEvent]]:
    registry = Registry()
    events: list[MembershipEvent] = []
    registry.listener = events.append
    return registry, events


def test_join_leave_and_rejoin_are_told_in_order(
    told: tuple[Registry, list[MembershipEvent]],
) -> None:
    registry, events = told
    a = opened(registry, "a").conn
    a.join("lobby", {"name": "ada"})
    a.join("lobby")  # already in, no new info: nothing to tell
    a.join("lobby", {"name": "ada"})  # the same info: nothing either
    a.join("lobby", {"name": "ada", "team": "red"})  # an update is told
    a.leave("lobby")
    a.leave("lobby")  # not in: nothing
    assert events == [
        MemberJoined(a, "lobby", {"name": "ada"}),
        MemberJoined(a, "lobby", {"name": "ada", "team": "red"}),
        MemberLeft(a, "lobby"),
    ]


def test_a_connection_that_ends_leaves_each_room_in_join_order(
    told: tuple[Registry, list[MembershipEvent]],
) -> None:
    registry, events = told
    stepper = opened(registry, "a")
    conn = stepper.conn
    for room in ("b", "a", "c"):
        conn.join(room)
    events.clear()
    stepper.transport_closed(1006, "", 1.0)
    assert events == [MemberLeft(conn, "b"), MemberLeft(conn, "a"), MemberLeft(conn, "c")]
    assert registry.rooms == frozenset()


def test_info_is_kept_copied_and_listed_with_members() -> None:
    registry = Registry()
    a, b = opened(registry, "a").conn, opened(registry, "b").conn
    mine = {"name": "ada"}
    a.join("lobby", mine)
    b.join("lobby")
    mine["name"] = "changed later"  # the registry kept a copy
    assert registry.info(a, "lobby") == {"name": "ada"}
    assert registry.info(b, "lobby") == {}
    assert registry.info(b, "elsewhere") is None
    assert registry.members("lobby") == {a: {"name": "ada"}, b: {}}
    assert list(registry.members("lobby")) == [a, b]  # join order
    registry.members("lobby")[a]["name"] = "x"  # a copy too
    assert registry.info(a, "lobby") == {"name": "ada"}
    assert registry.members("nobody") == {}


@pytest.mark.parametrize(
    ("info", "error"),
    [
        ({"n": 1}, TypeError),
        ({1: "n"}, TypeError),
        (["n", "v"], TypeError),
        ({"big": "x" * MAX_INFO_BYTES}, ValueError),
    ],
)
def test_bad_info_raises_at_join_and_changes_nothing(
    told: tuple[Registry, list[MembershipEvent]], info: object, error: type[Exception]
) -> None:
    registry, events = told
    a = opened(registry, "a").conn
    with pytest.raises(error):
        a.join("lobby", info)  # type: ignore[arg-type]
    assert registry.rooms == frozenset() and events == []


def test_without_a_listener_nothing_is_told_and_nothing_changes() -> None:
    registry = Registry()
    a = opened(registry, "a").conn
    a.join("lobby", {"k": "v"})
    a.leave("lobby")
    assert registry.listener is None and registry.rooms == frozenset()
