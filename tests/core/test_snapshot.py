"""Session snapshots, the outgoing ledger's write-ahead rule, restore and forget,
and the cross-worker replay decisions, case by case (the property test is
test_handover_property.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from socker_core import (
    CLOSE_CODES,
    SNAPSHOT_VERSION,
    CloseCode,
    Closed,
    Flow,
    FlowDefinitionError,
    LocalProtocolError,
    OutgoingLedger,
    Registry,
    ReplayBuffer,
    ResumeFailure,
    ResumePlan,
    RoomHistory,
    RoomRef,
    Send,
    SessionSnapshot,
    SnapshotError,
    State,
    Stepper,
    check_restorable,
    history_needed,
    plan_resume,
)


def resumable(flow: Flow, registry: Registry | None = None) -> Stepper:
    replay = ReplayBuffer(flow.max_resume_buffer, ledger=OutgoingLedger())
    stepper = Stepper(flow, registry=registry, replay=replay)
    stepper.open(0.0)
    return stepper


def game_flow(**options: Any) -> Flow:
    flow = Flow("game", resume_window=30.0, **options)

    @flow.step(timeout=10.0)
    def lobby(conn, message: bytes):  # type: ignore[no-untyped-def]
        conn.state.name = message.decode()
        return True

    @flow.step
    def play(conn, message: bytes):  # type: ignore[no-untyped-def]
        conn.send(b"ok")
        return False

    return flow


def persist(stepper: Stepper, now: float = 0.0) -> SessionSnapshot:
    """Snapshot, through bytes, and tell the Stepper it is stored."""
    snapshot = SessionSnapshot.from_bytes(stepper.snapshot(now, route="/g").to_bytes())
    stepper.persisted(snapshot)
    return snapshot


# -- bytes ---------------------------------------------------------------------------


def test_a_snapshot_survives_its_bytes_with_runs_directs_state_rooms_and_timers() -> None:
    registry = Registry()
    stepper = resumable(game_flow(), registry)
    stepper.replay.received += 1  # type: ignore[union-attr]
    stepper.receive(b"ada", 2.5)
    stepper.conn.join("r1")
    stepper.conn.join("r2")
    stepper.send(b"\x00direct\xff", 3.0)
    for offset in (1, 2, 3):
        stepper.deliver(b"p%d" % offset, RoomRef("r1", "E", offset))
    stepper.deliver(b"q", RoomRef("r2", "F", 9))
    stepper.deliver(b"p4", RoomRef("r1", "E", 4))
    snapshot = stepper.snapshot(4.0, route="/g", room_info={"r1": {"name": "ada"}})
    data = snapshot.to_bytes()
    assert data[:4] == b"SKSS" and data[4] == SNAPSHOT_VERSION
    back = SessionSnapshot.from_bytes(data)
    assert back == snapshot
    assert back.conn_id == stepper.id and back.step == "play" and back.route == "/g"
    assert back.step_remaining is None  # play has no timeout
    assert back.received == 1 and back.sent == 6 and back.acked == 0
    assert back.ledger[0] == b"\x00direct\xff"
    assert back.ledger[1:] == (
        RoomRef("r1", "E", 1),
        RoomRef("r1", "E", 2),
        RoomRef("r1", "E", 3),
        RoomRef("r2", "F", 9),
        RoomRef("r1", "E", 4),
    )
    assert back.tail == RoomRef("r1", "E", 4)
    assert dict(back.rooms) == {"r1": {"name": "ada"}, "r2": {}}
    assert dict(back.positions) == {"r1": ("E", 4), "r2": ("F", 9)}
    assert json.loads(back.state or b"") == {"name": "ada"}
    assert "ada" not in repr(back) and "direct" not in repr(back)
    # runs are one entry: the JSON does not grow with a steady room stream
    meta = json.loads(data[9 : 9 + int.from_bytes(data[5:9], "big")])
    assert [entry[0] for entry in meta["ledger"]] == ["d", "r", "r", "r"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"",
        lambda d: b"XXXX" + d[4:],
        lambda d: d[:4] + bytes([SNAPSHOT_VERSION + 1]) + d[5:],
        lambda d: d[:-1],
        lambda d: d + b"!",
        lambda d: d[:9] + b"[" + d[10:],
    ],
    ids=["empty", "magic", "version", "truncated", "trailing", "json"],
)
def test_bytes_that_are_not_a_snapshot_raise_snapshot_error(damage: Any) -> None:
    stepper = resumable(game_flow())
    stepper.send(b"x", 0.0)
    stepper.conn.state.n = 1
    data = stepper.snapshot(0.0).to_bytes()
    with pytest.raises(SnapshotError):
        SessionSnapshot.from_bytes(damage(data))


def test_a_snapshot_with_inconsistent_counts_is_refused() -> None:
    with pytest.raises(SnapshotError):
        SessionSnapshot("f", "/", "c", "s", None, 0, 2, 0, (b"x",), None, {}, {}, 1.0)


# -- conn.state and its codec -------------------------------------------------------------


@dataclass
class GameState:
    name: str = ""
    score: int = 0
    seen: list[int] = field(default_factory=list)


def test_the_default_json_codec_restores_a_state_class() -> None:
    flow = Flow("game", state=GameState, resume_window=5.0)
    flow.add(lambda conn, m: False, name="play")
    stepper = resumable(flow)
    stepper.conn.state.name, stepper.conn.state.score = "ada", 3
    stepper.conn.state.seen.append(7)
    snapshot = SessionSnapshot.from_bytes(stepper.snapshot(0.0).to_bytes())
    plan = ResumePlan(0, (), {})
    restored = Stepper.restore(flow, snapshot, 10.0, plan=plan)
    assert restored.conn.state == GameState("ada", 3, [7])


def test_a_state_that_json_cannot_encode_is_a_clear_local_error() -> None:
    stepper = resumable(game_flow())
    stepper.conn.state.sock = object()
    with pytest.raises(LocalProtocolError, match=r"conn\.state cannot be encoded.*state_codec"):
        stepper.snapshot(0.0)


def test_a_flow_may_bring_its_own_codec() -> None:
    class Codec:
        def encode(self, state: Any) -> bytes:
            return repr(sorted(vars(state).items())).encode()

        def decode(self, data: bytes) -> Any:
            return SimpleNamespace(**dict(eval(data)))

    flow = game_flow(state_codec=Codec())
    stepper = resumable(flow)
    stepper.conn.state.when = (1, 2)  # a tuple: JSON would make it a list
    snapshot = stepper.snapshot(0.0)
    restored = Stepper.restore(flow, snapshot, 0.0, plan=ResumePlan(0, (), {}))
    assert restored.conn.state.when == (1, 2)


def test_a_codec_without_encode_and_decode_is_a_flow_definition_error() -> None:
    with pytest.raises(FlowDefinitionError, match="state_codec"):
        Flow("f", state_codec=object())  # type: ignore[arg-type]


def test_a_state_never_made_travels_as_none() -> None:
    snapshot = resumable(game_flow()).snapshot(0.0)
    assert snapshot.state is None


# -- what a snapshot counts ------------------------------------------------------------------


def test_a_message_being_handled_and_those_queued_are_not_counted() -> None:
    flow = Flow("f", resume_window=5.0)

    @flow.step
    async def slow(conn, message: bytes) -> bool:  # pragma: no cover (never awaited)
        return False

    stepper = resumable(flow)
    replay = stepper.replay
    assert replay is not None
    for n in range(3):
        replay.received += 1
        events = stepper.receive(b"m%d" % n, 0.0)
        for event in events:  # close the coroutine we will never run
            getattr(getattr(event, "awaitable", None), "close", lambda: None)()
    assert stepper.phase is State.AWAITING and stepper.queued == 2
    assert stepper.snapshot(0.0).received == 0  # the client replays all three
    stepper.detach(1.0, 5.0)
    assert stepper.snapshot(1.0).received == 0


def test_the_step_timer_continues_from_the_time_left() -> None:
    flow = game_flow()
    stepper = resumable(flow)
    snapshot = stepper.snapshot(4.0)  # lobby: 10 s timeout entered at 0
    assert snapshot.step == "lobby" and snapshot.step_remaining == pytest.approx(6.0)
    restored = Stepper.restore(flow, snapshot, 100.0, plan=ResumePlan(0, (), {}))
    assert restored.next_deadline == pytest.approx(106.0)
    restored.attach(100.0)
    events = restored.tick(106.0)
    assert restored.close_code == CloseCode.STEP_TIMEOUT
    assert any(type(e).__name__ == "CloseRequested" for e in events)


@pytest.mark.parametrize("how", ["no ledger", "closing", "overflowed", "no window"])
def test_nothing_to_resume_is_a_local_error(how: str) -> None:
    flow = game_flow(max_resume_buffer=4)
    if how == "no ledger":
        stepper = Stepper(flow, replay=ReplayBuffer())
        stepper.open(0.0)
    elif how == "no window":
        plain = Flow("plain")
        plain.add(lambda conn, m: False, name="s")
        stepper = resumable(plain)
    else:
        stepper = resumable(flow)
        if how == "closing":
            stepper.close(1000, "", 0.0)
        else:
            stepper.send(b"too long", 0.0)
    with pytest.raises(LocalProtocolError):
        stepper.snapshot(0.0)


# -- the write-ahead rule -----------------------------------------------------------------


def test_write_ahead_consecutive_deliveries_of_the_persisted_tail_need_no_write() -> None:
    stepper = resumable(game_flow())
    replay = stepper.replay
    assert replay is not None and replay.ledger is not None
    persist(stepper)
    assert not replay.needs_persist
    stepper.deliver(b"1", RoomRef("r", "E", 1))
    assert replay.needs_persist  # a new room: only a newer snapshot can attribute it
    persist(stepper)
    for offset in range(2, 40):
        stepper.deliver(b"x", RoomRef("r", "E", offset))
        assert not replay.needs_persist, offset
    stepper.deliver(b"x", RoomRef("r", "E", 41))  # 40 skipped this member
    assert replay.needs_persist
    persist(stepper)
    stepper.deliver(b"x", RoomRef("r", "F", 1))  # the room's numbering restarted
    assert replay.needs_persist
    persist(stepper)
    stepper.deliver(b"x", RoomRef("other", "E", 42))
    assert replay.needs_persist
    persist(stepper)
    stepper.send(b"direct", 0.0)
    assert replay.needs_persist
    persist(stepper)
    stepper.deliver(b"x", RoomRef("other", "E", 43))  # after a direct: not the tail
    assert replay.needs_persist


def test_deliveries_while_a_snapshot_is_being_stored_become_durable_if_implicit() -> None:
    stepper = resumable(game_flow())
    replay = stepper.replay
    assert replay is not None and replay.ledger is not None
    stepper.deliver(b"1", RoomRef("r", "E", 1))
    taken = stepper.snapshot(0.0)  # being stored...
    stepper.deliver(b"2", RoomRef("r", "E", 2))
    stepper.deliver(b"3", RoomRef("r", "E", 3))
    assert replay.needs_persist
    stepper.persisted(taken)  # ...stored: 2 and 3 continue its tail
    assert not replay.needs_persist and replay.ledger.durable_sent == 3
    taken = stepper.snapshot(0.0)
    stepper.deliver(b"5", RoomRef("r", "E", 5))
    stepper.persisted(taken)
    assert replay.needs_persist and replay.ledger.durable_sent == 3
    stepper.persisted(SessionSnapshot.from_bytes(taken.to_bytes()))  # again: no change
    assert replay.ledger.durable_sent == 3


def test_an_older_snapshot_stored_late_changes_nothing() -> None:
    stepper = resumable(game_flow())
    replay = stepper.replay
    assert replay is not None and replay.ledger is not None
    old = stepper.snapshot(0.0)
    stepper.send(b"a", 0.0)
    new = stepper.snapshot(0.0)
    stepper.persisted(new)
    stepper.persisted(old)
    assert replay.ledger.durable_sent == 1 and not replay.needs_persist


def test_acknowledgements_state_the_persisted_received_count() -> None:
    stepper = resumable(game_flow())
    replay = stepper.replay
    assert replay is not None
    for name in (b"ada", b"m1", b"m2"):
        replay.received += 1
        stepper.receive(name, 0.0)
    assert replay.received == 3 and replay.ack_count == 0
    persist(stepper)
    assert replay.ack_count == 3
    plain = ReplayBuffer()
    plain.received = 5
    assert plain.ack_count == 5


def test_a_snapshot_of_another_connection_cannot_be_marked_persisted() -> None:
    one, two = resumable(game_flow()), resumable(game_flow())
    with pytest.raises(LocalProtocolError):
        one.persisted(two.snapshot(0.0))


# -- rooms in the ledger ----------------------------------------------------------------


def test_leaving_a_room_forgets_its_position_and_a_rejoin_starts_afresh() -> None:
    registry = Registry()
    stepper = resumable(game_flow(), registry)
    ledger = stepper.replay.ledger  # type: ignore[union-attr]
    assert ledger is not None
    stepper.conn.join("r")
    ledger.joined_at("r", "E", 5)
    stepper.deliver(b"6", RoomRef("r", "E", 6))
    ledger.joined_at("r", "E", 9)  # reported late: the delivery already placed it
    assert ledger.positions["r"] == ("E", 6)
    stepper.conn.leave("r")
    assert "r" not in ledger.positions
    stepper.conn.join("r")
    ledger.joined_at("r", "E", 20)
    assert stepper.snapshot(0.0).positions == {"r": ("E", 20)}


def test_deliver_drops_what_the_member_already_has() -> None:
    stepper = resumable(game_flow())
    stepper.deliver(b"5", RoomRef("r", "E", 5))
    assert not stepper.deliver(b"5", RoomRef("r", "E", 5))
    assert not stepper.deliver(b"4", RoomRef("r", "E", 4))
    assert stepper.deliver(b"1", RoomRef("r", "F", 1))  # another epoch
    assert [e for e in stepper.pending_events() if isinstance(e, Send)] == [
        Send(b"5"),
        Send(b"1"),
    ]
    # Without a ledger a delivery is a plain send.
    flow = game_flow()
    plain = Stepper(flow)
    plain.open(0.0)
    assert plain.deliver(b"x", RoomRef("r", "E", 1)) and plain.deliver(b"x", RoomRef("r", "E", 1))


# -- restore and forget -----------------------------------------------------------------


def test_restore_continues_the_session_detached_with_its_id_rooms_and_hooks() -> None:
    flow = game_flow()
    hooks: list[str] = []
    flow.on_open(lambda conn: hooks.append("open"))
    flow.on_resume(lambda conn: hooks.append("resume"))
    flow.on_close(lambda conn: hooks.append("close"))
    old = resumable(flow, Registry())
    old.replay.received += 1  # type: ignore[union-attr]
    old.receive(b"ada", 0.0)
    old.conn.join("r")
    old.replay.ledger.joined_at("r", "E", 0)  # type: ignore[union-attr]
    snapshot = SessionSnapshot.from_bytes(old.snapshot(1.0, room_info={"r": {"k": "v"}}).to_bytes())
    hooks.clear()
    registry = Registry()
    plan = plan_resume(snapshot, 0, {"r": RoomHistory("r", "E", 0, ((1, b"p1"),))}, max_bytes=99)
    assert isinstance(plan, ResumePlan)
    new = Stepper.restore(flow, snapshot, 5.0, plan=plan, registry=registry)
    assert new.id == old.id and new.phase is State.DETACHED and new.step == "play"
    assert new.conn.state.name == "ada" and new.conn.rooms == {"r"}
    assert registry.get(old.id) is new.conn
    assert new.replay is not None and new.replay.received == 1
    assert new.replay.replay_after(0) == [b"p1"]
    assert new.replay.needs_persist  # the replay is not durable until its snapshot is stored
    new.attach(5.0)
    assert hooks == ["resume"] and new.phase is State.OPEN
    new.replay.received += 1
    assert Send(b"ok") in new.receive(b"hi", 5.0)
    again = new.snapshot(6.0)
    assert again.sent == 2 and again.positions == {"r": ("E", 1)}


def test_restore_refuses_a_snapshot_its_flow_cannot_take() -> None:
    snapshot = resumable(game_flow()).snapshot(0.0, route="/g")
    other = Flow("other", resume_window=1.0)
    other.add(lambda conn, m: False, name="play")
    with pytest.raises(LocalProtocolError, match="different flow"):
        Stepper.restore(other, snapshot, 0.0, plan=ResumePlan(0, (), {}))


def test_check_restorable_names_the_code() -> None:
    flow = game_flow()
    snapshot = resumable(flow).snapshot(0.0, route="/g")
    assert check_restorable(flow, snapshot, "/g") is None
    refused = check_restorable(flow, snapshot, "/elsewhere")
    assert refused is not None and refused.code == CloseCode.RESUME_REFUSED
    renamed = Flow("game", resume_window=1.0)
    renamed.add(lambda conn, m: False, name="other-step")
    changed = check_restorable(renamed, snapshot, "/g")
    assert changed is not None and changed.code == CloseCode.FLOW_CHANGED
    unresumable = Flow("game")
    unresumable.add(lambda conn, m: False, name="lobby")
    gone = check_restorable(unresumable, snapshot, "/g")
    assert gone is not None and gone.code == CloseCode.FLOW_CHANGED


def test_forget_ends_a_detached_copy_without_on_close() -> None:
    flow = game_flow()
    closed: list[str] = []
    flow.on_close(lambda conn: closed.append("close"))
    registry = Registry()
    stepper = resumable(flow, registry)
    stepper.conn.join("r")
    with pytest.raises(LocalProtocolError):
        stepper.forget(0.0)  # only a detached copy can be forgotten
    stepper.detach(1.0, 30.0)
    events = stepper.forget(2.0)
    assert events == [Closed(CloseCode.SESSION_TAKEN_OVER, "resumed on another worker", False)]
    assert stepper.is_closed and closed == [] and registry.get(stepper.id) is None
    assert stepper.forget(3.0) == []
    assert registry.room("r") == frozenset()


# -- the decisions ----------------------------------------------------------------------


def snapshot_with(ledger: list[bytes | RoomRef], acked: int = 0, **extra: Any) -> SessionSnapshot:
    last = ledger[-1] if ledger else None
    fields: dict[str, Any] = {
        "flow": "game",
        "route": "/g",
        "conn_id": "c",
        "step": "play",
        "step_remaining": None,
        "received": 0,
        "sent": acked + len(ledger),
        "acked": acked,
        "ledger": tuple(ledger),
        "tail": last if isinstance(last, RoomRef) else None,
        "rooms": {"r": {}},
        "positions": {"r": ("E", 3)},
        "window": 30.0,
    }
    fields.update(extra)
    return SessionSnapshot(**fields)


def test_impossible_counts_are_a_protocol_error() -> None:
    snapshot = snapshot_with([b"d"], acked=2)
    for n in (1, 4):
        refused = history_needed(snapshot, n)
        assert isinstance(refused, ResumeFailure) and refused.code == CloseCode.PROTOCOL_ERROR
    # more than sent is fine after a room tail (the implicit continuation)
    tail = snapshot_with([RoomRef("r", "E", 3)], acked=2)
    assert history_needed(tail, 5) == {"r": ("E", 5)}


def test_a_room_without_a_known_position_is_refused_not_guessed() -> None:
    snapshot = snapshot_with([], positions={})
    refused = history_needed(snapshot, 0)
    assert isinstance(refused, ResumeFailure) and refused.code == CloseCode.RESUME_HISTORY_LOST


def test_the_plan_interleaves_ledger_replay_then_new_publications() -> None:
    snapshot = snapshot_with([RoomRef("r", "E", 2), b"direct", RoomRef("r", "E", 3)], acked=0)
    assert history_needed(snapshot, 1) == {"r": ("E", 2)}
    history = RoomHistory("r", "E", 2, ((3, b"p3"), (4, None), (5, b"p5")))
    plan = plan_resume(snapshot, 1, {"r": history}, max_bytes=100)
    assert isinstance(plan, ResumePlan)
    assert plan.messages == (
        (b"direct", None),
        (b"p3", RoomRef("r", "E", 3)),
        (b"p5", RoomRef("r", "E", 5)),
    )
    assert plan.positions == {"r": ("E", 5)}
    small = plan_resume(snapshot, 1, {"r": history}, max_bytes=5)
    assert isinstance(small, ResumeFailure) and small.code == CloseCode.RESUME_BUFFER_OVERFLOW


@pytest.mark.parametrize(
    "history",
    [
        RoomHistory("r", "E", 2, (), "trimmed"),
        RoomHistory("r", "F", 2, ()),
        RoomHistory("r", "E", 2, ((3, b"p3"), (5, b"p5"))),
        RoomHistory("r", "E", 1, ((2, b"p2"),)),  # ends before what is needed: fine
        RoomHistory("r", "E", 3, ()),  # starts after what is needed
        RoomHistory("r", "E", 2, ((3, None),)),  # says the member was skipped
    ],
    ids=["trimmed", "epoch", "hole", "earlier", "later", "skipped"],
)
def test_history_that_cannot_give_the_missed_messages_is_4415(history: RoomHistory) -> None:
    snapshot = snapshot_with([b"direct", RoomRef("r", "E", 3)])
    plan = plan_resume(snapshot, 1, {"r": history}, max_bytes=100)
    assert isinstance(plan, ResumeFailure) and plan.code == CloseCode.RESUME_HISTORY_LOST
    assert plan.code in CLOSE_CODES and "'r'" in plan.reason
    missing = plan_resume(snapshot, 1, {}, max_bytes=100)
    assert isinstance(missing, ResumeFailure) and missing.code == CloseCode.RESUME_HISTORY_LOST


def test_a_second_fetch_extends_the_first() -> None:
    first = RoomHistory("r", "E", 2, ((3, b"3"), (4, b"4")))
    assert first.then(RoomHistory("r", "E", 3, ((4, b"4"), (5, b"5")))).messages == (
        (3, b"3"),
        (4, b"4"),
        (5, b"5"),
    )
    assert first.then(RoomHistory("r", "E", 9, ())).lost == "trimmed"
    assert first.then(RoomHistory("r", "E", 4, (), "trimmed")).lost == "trimmed"
    assert first.then(RoomHistory("r", "F", 0, ())).lost is not None
    with pytest.raises(ValueError):
        first.then(RoomHistory("q", "E", 2))
