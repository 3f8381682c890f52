"""Cross-worker resume, the proof in the pure core: a session sends direct messages
and room deliveries in any interleaving, persists snapshots by the write-ahead rule
(asynchronously: a snapshot is taken, then stored later), its frames are written
only once a stored snapshot attributes them, the client receives and acknowledges
some of them; the worker is killed at any point; the client states any count
consistent with what was written. The plan built from the stored bytes, the count
and the rooms' (possibly trimmed) history then gives the client exactly what it
missed: every room publication addressed to it exactly once and in order, every
written direct message exactly once, or an explicit 4415 exactly when history that
was needed is gone."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from socker_core import (
    CloseCode,
    Flow,
    OutgoingLedger,
    Registry,
    ReplayBuffer,
    ResumeFailure,
    ResumePlan,
    RoomHistory,
    RoomRef,
    Send,
    SessionSnapshot,
    Stepper,
    history_needed,
    plan_resume,
)

ROOMS = ("a", "b", "c")


@dataclass
class Stream:
    """One room's stream as the engine has it."""

    epoch: str = "e1"
    generation: int = 1
    # (offset, payload, skips the member) per epoch
    published: dict[str, list[tuple[int, bytes, bool]]] = field(default_factory=dict)

    def publish(self, payload: bytes, skip: bool) -> int:
        items = self.published.setdefault(self.epoch, [])
        offset = len(items) + 1
        items.append((offset, payload, skip))
        return offset

    def restart(self) -> None:
        self.generation += 1
        self.epoch = f"e{self.generation}"

    def fetch(self, room: str, epoch: str, after: int, keep: int) -> RoomHistory:
        if epoch != self.epoch:
            return RoomHistory(room, epoch, after, (), "epoch-changed")
        items = self.published.get(epoch, [])
        first_kept = max(1, len(items) - keep + 1)
        if after + 1 < first_kept:
            return RoomHistory(room, epoch, after, (), "trimmed")
        return RoomHistory(
            room,
            epoch,
            after,
            tuple((o, None if skip else p) for o, p, skip in items if o > after),
        )

    def available(self, epoch: str, after: int, keep: int) -> bool:
        if epoch != self.epoch:
            return False
        items = self.published.get(epoch, [])
        return after + 1 >= max(1, len(items) - keep + 1)


def make_server(rooms: tuple[str, ...]) -> tuple[Stepper, Registry]:
    flow = Flow("game", resume_window=30.0, max_resume_buffer=1 << 30)

    @flow.step
    def play(conn, message: bytes):  # type: ignore[no-untyped-def]
        conn.state.seen = getattr(conn.state, "seen", 0) + 1
        if message.endswith(b"!"):
            conn.send(b"re:" + message)
        return False

    registry = Registry()
    stepper = Stepper(
        flow, registry=registry, replay=ReplayBuffer(1 << 30, ledger=OutgoingLedger())
    )
    stepper.open(0.0)
    for room in rooms:
        stepper.conn.join(room)
        assert stepper.replay is not None and stepper.replay.ledger is not None
        stepper.replay.ledger.joined_at(room, "e1", 0)
    return stepper, registry


PUBLISH = st.tuples(st.just("publish"), st.sampled_from(ROOMS), st.booleans())
STEADY = st.tuples(st.just("publish"), st.just("a"), st.just(False))
OPS = st.one_of(
    st.tuples(st.just("direct")),
    PUBLISH,
    STEADY,
    STEADY,
    st.tuples(st.just("snap")),
    st.tuples(st.just("stored")),
    st.tuples(st.just("persist")),  # snap and stored at once (nothing else in flight)
    st.tuples(st.just("write")),
    st.tuples(st.just("flush")),  # write, and the client reads all of it
    st.tuples(st.just("flush")),
    st.tuples(st.just("client-reads"), st.integers(0, 5)),
    st.tuples(st.just("client-acks")),
    st.tuples(st.just("client-sends"), st.booleans()),
    st.tuples(st.just("server-acks")),
    st.tuples(st.just("restart"), st.sampled_from(ROOMS)),
)


#: Steady broadcasting in one room with the odd direct message: the implicit tail.
STREAMING = st.one_of(
    STEADY,
    STEADY,
    STEADY,
    st.tuples(st.just("persist")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("write")),
    st.tuples(st.just("client-reads"), st.integers(0, 3)),
    st.tuples(st.just("client-acks")),
    st.tuples(st.just("direct")),
    st.tuples(st.just("publish"), st.just("a"), st.just(True)),
)
ROOM_SETS = st.sets(st.sampled_from(ROOMS)).map(lambda s: tuple(sorted(s | {"a"})))


@settings(max_examples=400, deadline=None)
@given(
    rooms=ROOM_SETS,
    ops=st.lists(OPS, min_size=4, max_size=80),
    keep=st.integers(1, 200),
    arrived=st.floats(0.0, 1.0),
    restarts=st.booleans(),
)
def test_kill_anywhere_replays_exactly_what_was_missed(
    rooms: tuple[str, ...],
    ops: list[tuple[object, ...]],
    keep: int,
    arrived: float,
    restarts: bool,
) -> None:
    kill_and_resume(rooms, ops, keep, arrived, restarts)


@settings(max_examples=300, deadline=None)
@given(
    rooms=ROOM_SETS,
    ops=st.lists(STREAMING, min_size=4, max_size=80),
    keep=st.integers(1, 200),
    arrived=st.floats(0.0, 1.0),
    coda=st.lists(st.sampled_from(["steady", "skipped", "direct"]), max_size=6),
    asynchronous=st.booleans(),
)
def test_kill_while_one_room_streams(
    rooms: tuple[str, ...],
    ops: list[tuple[object, ...]],
    keep: int,
    arrived: float,
    coda: list[str],
    asynchronous: bool,
) -> None:
    # The kill lands while the room streams on after the last stored snapshot: the
    # client then holds more messages than that snapshot's sent count (the implicit
    # tail). Asynchronous: the snapshot is stored only after more was sent (a direct
    # message, a publication that skipped the member: not implicit, held back).
    steady: tuple[object, ...] = ("publish", "a", False)
    more: dict[str, tuple[object, ...]] = {
        "steady": steady,
        "skipped": ("publish", "a", True),
        "direct": ("direct",),
    }
    middle = [more[name] for name in coda]
    if asynchronous:
        ending = [steady, ("snap",), *middle, ("stored",), ("write",)]
    else:
        ending = [steady, ("persist",), *middle, ("write",)]
    kill_and_resume(rooms, ops + ending, keep, arrived, False)


def kill_and_resume(
    rooms: tuple[str, ...],
    ops: list[tuple[object, ...]],
    keep: int,
    arrived: float,
    restarts: bool,
) -> None:
    stepper, _registry = make_server(rooms)
    replay = stepper.replay
    assert replay is not None and replay.ledger is not None
    streams = {room: Stream() for room in ROOMS}
    # Truth: every message the server assigned a number to, in order.
    messages: list[tuple[bytes, RoomRef | None]] = []
    # What a real wire does: the initial snapshot is stored before anything is written.
    first = stepper.snapshot(0.0, route="/game")
    stored = first.to_bytes()
    stepper.persisted(SessionSnapshot.from_bytes(stored))
    in_flight: list[SessionSnapshot] = []
    written = client_read = client_acked = 0
    client_sent = client_trimmed = 0  # client -> server: what it sent, what it forgot

    def collect(events: list[object]) -> None:
        for event in events:
            if isinstance(event, Send):
                assert isinstance(event.data, bytes)
                messages.append((event.data, None))

    for counter, op in enumerate(ops, 1):
        kind = op[0]
        if kind == "direct":
            collect(stepper.send(b"d%d" % counter, 0.0))
        elif kind == "publish":
            room, skip = op[1], op[2]
            assert isinstance(room, str) and isinstance(skip, bool)
            stream = streams[room]
            payload = b"%s:%d" % (room.encode(), counter)
            offset = stream.publish(payload, skip)
            if room in rooms and not skip:
                ref = RoomRef(room, stream.epoch, offset)
                assert stepper.deliver(payload, ref)
                messages.append((payload, ref))
                assert stepper.pending_events() == [Send(payload)]
        elif kind == "snap":
            in_flight.append(stepper.snapshot(0.0, route="/game"))
        elif kind == "stored" and in_flight:
            stored = in_flight.pop(0).to_bytes()
            stepper.persisted(SessionSnapshot.from_bytes(stored))
        elif kind == "persist":  # what is in flight lands, then one more, at once
            in_flight.append(stepper.snapshot(0.0, route="/game"))
            for snapshot in in_flight:
                stored = snapshot.to_bytes()
                stepper.persisted(SessionSnapshot.from_bytes(stored))
            in_flight.clear()
        elif kind == "write":
            # The wire writes, in order, every frame a stored snapshot attributes.
            written = max(written, min(replay.sent, replay.ledger.durable_sent))
        elif kind == "flush":
            written = client_read = max(written, min(replay.sent, replay.ledger.durable_sent))
        elif kind == "client-reads":
            step = op[1]
            assert isinstance(step, int)
            client_read = min(written, client_read + step)
        elif kind == "client-acks":
            assert replay.ack(client_read)
            client_acked = client_read
        elif kind == "client-sends":
            client_sent += 1
            replay.received += 1  # the wire counts, then the Stepper handles it
            collect(stepper.receive(b"m%d%s" % (client_sent, b"!" if op[1] else b""), 0.0))
        elif kind == "server-acks":
            client_trimmed = max(client_trimmed, replay.ack_count)
        elif kind == "restart" and restarts:
            room = op[1]
            assert isinstance(room, str)
            streams[room].restart()
        # The rule itself: nothing written is beyond what the stored snapshot attributes.
        assert written <= replay.ledger.durable_sent

    # kill -9. The client got some of what was written (in flight: maybe).
    n = client_read + round(arrived * (written - client_read))
    assert client_acked <= n <= written
    snapshot = SessionSnapshot.from_bytes(stored)
    # The ack rule: the client still holds every message the new worker will ask for.
    assert client_trimmed <= snapshot.received <= client_sent

    # Truth: what the client should end with. Up to max(n, sent) it is the server's
    # own sequence (what the snapshot attributes, plus the implicit tail the client
    # got); then, per room, every addressed publication after the last one in it.
    upto = max(n, snapshot.sent)
    prefix = messages[:upto]
    last: dict[str, tuple[str, int]] = {room: ("e1", 0) for room in rooms}
    for _, ref in prefix:
        if ref is not None:
            last[ref.room] = (ref.epoch, ref.offset)
    # Is every history the replay needs still there?
    wanted: dict[str, tuple[str, int]] = {}
    for _, ref in messages[n : snapshot.sent]:
        if ref is not None and ref.room not in wanted:
            wanted[ref.room] = (ref.epoch, ref.offset - 1)
    possible = all(
        streams[room].available(*wanted.get(room, last[room]), keep)
        and (room not in wanted or wanted[room][0] == last[room][0])
        for room in rooms
    ) and all(
        streams[room].available(*pos, keep)
        and all(r.epoch == pos[0] for _, r in messages[n : snapshot.sent] if r and r.room == room)
        for room, pos in wanted.items()
    )

    needs = history_needed(snapshot, n)
    if isinstance(needs, ResumeFailure):
        plan: ResumePlan | ResumeFailure = needs
    else:
        histories = {
            room: streams[room].fetch(room, epoch, after, keep)
            for room, (epoch, after) in needs.items()
        }
        plan = plan_resume(snapshot, n, histories, max_bytes=1 << 30)

    if isinstance(plan, ResumeFailure):
        assert plan.code == CloseCode.RESUME_HISTORY_LOST, plan
        assert not possible, f"refused although history was complete: {plan}"
        return
    assert isinstance(plan, ResumePlan)
    assert possible, "the plan claims a recovery the history cannot give"
    expected = list(prefix)
    for room in sorted(rooms):
        epoch, end = last[room]
        stream = streams[room]
        assert epoch == stream.epoch
        for offset, payload, skip in stream.published.get(epoch, []):
            if offset > end and not skip:
                expected.append((payload, RoomRef(room, epoch, offset)))
    got = messages[:n] + list(plan.messages)
    assert got == expected

    # 0 lost, 0 duplicated, per room, in the current epoch of each room.
    for room in rooms:
        stream = streams[room]
        offsets = [r.offset for _, r in got if r is not None and r.room == room and r.epoch == "e1"]
        if stream.epoch == "e1":
            addressed = [o for o, _, skip in stream.published.get("e1", []) if not skip]
            assert offsets == addressed
    # Every direct message that was written arrives exactly once.
    directs_written = [d for d, ref in messages[:written] if ref is None]
    directs_got = [d for d, ref in got if ref is None]
    assert directs_got[: len(directs_written)] == directs_written
    assert len(set(directs_got)) == len(directs_got)

    # The restored Stepper replays exactly the plan, and takes live delivery on from it.
    restored = Stepper.restore(stepper.flow, snapshot, 1.0, plan=plan, registry=Registry())
    assert restored.id == stepper.id and restored.step == "play" and restored.is_detached
    assert restored.replay is not None
    assert restored.replay.replay_after(n) == [p for p, _ in plan.messages]
    for room in rooms:
        epoch, offset = plan.positions[room]
        assert not restored.deliver(b"dup", RoomRef(room, epoch, offset)) or offset == 0
        assert restored.deliver(b"next", RoomRef(room, epoch, offset + 1))
