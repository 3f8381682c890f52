"""The registry's membership listener and members' presence info: every change of
membership is told, in order, with the connection, the room and the info."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "rejoin", "leave", "end"]),
            st.integers(0, 2),  # which connection
            st.sampled_from(["a", "b", "c"]),  # which room
        ),
        max_size=40,
    )
)
def test_the_told_changes_rebuild_the_registry_exactly(
    steps: list[tuple[str, int, str]],
) -> None:
    """Whatever happens, a follower that applies the told changes in order holds the
    same membership (and info) as the registry: what a cluster engine relies on."""
    registry = Registry()
    follower: dict[tuple[str, str], dict[str, str]] = {}

    def follow(event: MembershipEvent) -> None:
        key = (event.conn.id, event.room)
        if isinstance(event, MemberJoined):
            follower[key] = dict(event.info)
        else:
            assert key in follower, "a leave without a join"
            del follower[key]

    registry.listener = follow
    steppers = [opened(registry, f"c{i}") for i in range(3)]
    for n, (action, which, room) in enumerate(steps):
        stepper = steppers[which]
        conn = stepper.conn
        if action == "end":
            stepper.transport_closed(1006, "", float(n))
            steppers[which] = opened(registry, f"c{which}-{n}")
        elif not conn.is_open:
            continue
        elif action == "join":
            conn.join(room)
        elif action == "rejoin":
            conn.join(room, {"n": str(n % 2)})
        else:
            conn.leave(room)
    expected = {
        (conn.id, room): info
        for room in registry.rooms
        for conn, info in registry.members(room).items()
    }
    assert follower == expected
