"""The rooms registry: presence, membership, the recipients of a broadcast, and the
embedded delivery through each Stepper's outbox."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socker_core import (
    Connection,
    ConnectionClosedError,
    Flow,
    LocalProtocolError,
    Registry,
    Send,
    State,
    Stepper,
)


def lobby_flow(events: list[Any] | None = None) -> Flow:
    flow = Flow("lobby")

    @flow.on_open
    def enter(conn: Connection) -> None:
        conn.join("lobby")

    @flow.step
    def play(conn: Connection, message: bytes) -> bool:
        if message.startswith(b"join "):
            conn.join(message[5:].decode())
        elif message.startswith(b"leave "):
            conn.leave(message[6:].decode())
        elif message.startswith(b"shout "):
            conn.server.broadcast(message[6:], room="lobby", skip=conn)
        return False

    @flow.on_close
    def gone(conn: Connection) -> None:
        if events is not None:
            events.append((conn.id, conn.rooms, conn.server.room("lobby")))

    return flow


def opened(registry: Registry, n: int, flow: Flow | None = None) -> list[Stepper]:
    steppers = [Stepper(flow or lobby_flow(), registry=registry) for _ in range(n)]
    for stepper in steppers:
        stepper.open(0.0)
    return steppers


def sends(events: list[Any]) -> list[bytes]:
    return [event.data for event in events if isinstance(event, Send)]


def test_open_adds_and_on_open_may_join() -> None:
    registry = Registry()
    a, b = opened(registry, 2)
    assert registry.get(a.id) is a.conn and registry.get(b.id) is b.conn
    assert registry.connections == {a.conn, b.conn}
    assert registry.room("lobby") == {a.conn, b.conn}
    assert registry.rooms == {"lobby"}
    assert a.conn.rooms == {"lobby"}
    assert a.conn.server is registry
    assert len(registry) == 2 and a.conn in registry


def test_join_leave_and_rooms() -> None:
    registry = Registry()
    a, b = opened(registry, 2)
    a.receive(b"join match-1", 1.0)
    assert a.conn.rooms == {"lobby", "match-1"}
    assert registry.room("match-1") == {a.conn}
    a.conn.join("match-1")  # twice: a no-op
    assert registry.room("match-1") == {a.conn}
    a.receive(b"leave match-1", 1.0)
    assert registry.room("match-1") == frozenset()
    assert registry.rooms == {"lobby"}  # only rooms with members
    a.conn.leave("nowhere")  # a no-op
    assert b.conn.rooms == {"lobby"}


def test_recipients_in_join_order_without_the_skipped() -> None:
    registry = Registry()
    a, b, c, d = opened(registry, 4)
    conns = [s.conn for s in (a, b, c, d)]
    assert registry.recipients() == conns
    assert registry.recipients("lobby", skip=b.conn) == [a.conn, c.conn, d.conn]
    assert registry.recipients(skip=[a.conn, d.conn]) == [b.conn, c.conn]
    assert registry.recipients(skip={c.conn}) == [a.conn, b.conn, d.conn]
    assert registry.recipients("empty") == []


def test_embedded_broadcast_queues_a_send_on_each_recipient() -> None:
    registry = Registry()
    a, b, c = opened(registry, 3)
    woken: list[str] = []
    for stepper in (a, b, c):
        stepper.wakeup = lambda s=stepper: woken.append(s.id)
    assert registry.broadcast(b"hello", room="lobby", skip=b.conn) == 2
    assert sends(a.pending_events()) == [b"hello"]
    assert b.pending_events() == []
    assert sends(c.pending_events()) == [b"hello"]
    assert woken == [a.id, c.id]


def test_broadcast_from_a_handler_keeps_each_connections_order() -> None:
    registry = Registry()
    a, b = opened(registry, 2)
    # From a's handler: a is skipped; b gets it in its outbox.
    assert sends(a.receive(b"shout hi", 1.0)) == []
    assert sends(b.pending_events()) == [b"hi"]
    # A broadcast that includes the sender lands in the call's own events, in order.
    flow = Flow("echo-all")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(b"first")
        conn.server.broadcast(message)
        conn.send(b"last")
        return False

    other = Registry()
    x, y = opened(other, 2, flow)
    assert sends(x.receive(b"mid", 1.0)) == [b"first", b"mid", b"last"]
    assert sends(y.pending_events()) == [b"mid"]


def test_a_closing_connection_is_no_recipient_and_leaves_before_on_close() -> None:
    seen: list[Any] = []
    registry = Registry()
    a, b = opened(registry, 2, lobby_flow(seen))
    a.receive(b"join match", 1.0)
    a.close(1000, "bye", 2.0)  # closing: out of every room at once
    assert registry.room("lobby") == {b.conn}
    assert a.conn.rooms == frozenset()
    assert registry.get(a.id) is None
    assert registry.broadcast(b"x") == 1
    with pytest.raises(ConnectionClosedError):
        a.conn.join("lobby")
    a.transport_closed(1000, "bye", 3.0)
    # Lost without a close: the on_close hook already sees it out of every room.
    b.transport_closed(1006, "lost", 3.0)
    assert seen == [(a.id, frozenset(), {b.conn}), (b.id, frozenset(), frozenset())]
    assert registry.rooms == frozenset() and len(registry) == 0


def test_a_stepper_without_a_registry_has_no_rooms() -> None:
    flow = Flow("client")
    flow.add(lambda conn, message: False)
    stepper = Stepper(flow)
    stepper.open(0.0)
    conn = stepper.conn
    assert conn.server is None and conn.rooms == frozenset()
    assert conn.remote_address is None and conn.request is None
    with pytest.raises(LocalProtocolError):
        conn.join("lobby")


def test_identity_given_by_the_embedder() -> None:
    registry = Registry()
    stepper = Stepper(
        lobby_flow(),
        id="player-7",
        registry=registry,
        server="my-server",
        remote_address=("127.0.0.1", 5000),
        request={"path": "/"},
    )
    stepper.open(0.0)
    conn = stepper.conn
    assert conn.id == "player-7" and registry.get("player-7") is conn
    assert conn.server == "my-server"  # a driver's Server, when one is given
    assert conn.remote_address == ("127.0.0.1", 5000)
    assert conn.request == {"path": "/"}
    twin = Stepper(lobby_flow(), id="player-7", registry=registry)
    with pytest.raises(LocalProtocolError):
        twin.open(0.0)
    assert twin.phase is State.IDLE and registry.get("player-7") is conn


def test_bad_room_names_and_data_are_local_errors() -> None:
    registry = Registry()
    (a,) = opened(registry, 1)
    with pytest.raises(LocalProtocolError):
        a.conn.join("")
    with pytest.raises(LocalProtocolError):
        registry.recipients(room=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.broadcast("text")  # type: ignore[arg-type]


def test_quiet_tells_a_driver_when_direct_bytes_keep_the_order() -> None:
    registry = Registry()
    (a,) = opened(registry, 1)
    assert a.quiet
    a.conn.send(b"pending")  # outside a call: in the outbox
    assert not a.quiet
    a.pending_events()
    assert a.quiet
    a.close(1000, "", 1.0)
    assert not a.quiet


def test_a_guard_is_held_by_every_call() -> None:
    entered: list[str] = []

    class Guard:
        def __enter__(self) -> None:
            entered.append("in")

        def __exit__(self, *exc: object) -> None:
            entered.append("out")

    registry = Registry()
    registry.guard = Guard()
    opened(registry, 1)
    registry.recipients()
    registry.rooms  # noqa: B018
    assert entered and entered.count("in") == entered.count("out")


# -- invariants under any sequence of joins, leaves, broadcasts and ends ---------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "broadcast", "close", "lost"]),
        st.integers(0, 4),  # which connection
        st.sampled_from(["a", "b", "c"]),  # which room
    ),
    max_size=60,
)


@given(OPS)
@settings(max_examples=150, deadline=None)
def test_membership_invariants(ops: list[tuple[str, int, str]]) -> None:
    registry = Registry()
    flow = Flow("idle")
    flow.add(lambda conn, message: False)
    steppers = [Stepper(flow, registry=registry) for _ in range(5)]
    for stepper in steppers:
        stepper.open(0.0)
    joined: dict[int, set[str]] = {i: set() for i in range(5)}  # the model
    order: dict[str, list[int]] = {"a": [], "b": [], "c": []}  # members in join order

    def forget(index: int) -> None:
        joined[index].clear()
        for members in order.values():
            if index in members:
                members.remove(index)

    for op, index, room in ops:
        stepper = steppers[index]
        conn = stepper.conn
        if op == "join":
            if conn.is_open:
                conn.join(room)
                joined[index].add(room)
                if index not in order[room]:
                    order[room].append(index)
            else:
                with pytest.raises(ConnectionClosedError):
                    conn.join(room)
        elif op == "leave":
            conn.leave(room)
            joined[index].discard(room)
            if index in order[room]:
                order[room].remove(index)
        elif op == "broadcast":
            expected = [s.conn for i, s in enumerate(steppers) if room in joined[i]]
            assert registry.recipients(room) == [steppers[i].conn for i in order[room]]
            assert registry.broadcast(b"x", room=room, skip=conn) == len(set(expected) - {conn})
            for other in steppers:
                other.pending_events()
        elif op == "close":
            stepper.close(1000, "", 1.0)
            forget(index)
        elif not stepper.is_closed:
            stepper.transport_closed(1006, "lost", 1.0)
            forget(index)
        # Every member is open, and both views of membership agree with the model.
        for i, s in enumerate(steppers):
            assert s.conn.rooms == joined[i]
            assert not joined[i] or s.conn.is_open
        for name in ("a", "b", "c"):
            assert registry.room(name) == {
                s.conn for i, s in enumerate(steppers) if name in joined[i]
            }
        assert registry.rooms == {name for rooms in joined.values() for name in rooms}
        assert registry.connections == {s.conn for s in steppers if s.conn.is_open}
