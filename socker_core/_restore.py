"""Stepper <-> SessionSnapshot: what `Stepper.snapshot`, `Stepper.persisted`,
`Stepper.restore` and `Stepper.forget` do (kept here so the Stepper's own module
stays about running a flow). Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import LocalProtocolError
from ._handover import ResumePlan, check_restorable
from ._ledger import OutgoingLedger, RoomRef
from ._resume import ReplayBuffer
from ._snapshot import LedgerEntry, SessionSnapshot, SnapshotError, encode_state
from ._state import Happening, State

if TYPE_CHECKING:
    from ._flow import Flow
    from ._rooms import Registry
    from ._stepper import Connection, Stepper

_AWAITING_STATES = (State.AWAITING, State.DETACHED_AWAITING)


def ledger_of(stepper: Stepper[Any]) -> tuple[ReplayBuffer, OutgoingLedger]:
    replay = stepper.replay
    if replay is None or replay.ledger is None:
        raise LocalProtocolError(
            "cross-worker resume needs a Stepper made with ReplayBuffer(ledger=OutgoingLedger())"
        )
    return replay, replay.ledger


def take_snapshot(
    stepper: Stepper[Any],
    now: float,
    route: str,
    room_info: Mapping[str, Mapping[str, str]] | None,
) -> SessionSnapshot:
    replay, ledger = ledger_of(stepper)
    if replay.overflowed:
        raise LocalProtocolError("the replay buffer overflowed: this session cannot resume")
    flow = stepper.flow
    window = flow.resume_window
    if window is None:
        raise LocalProtocolError(f"flow {flow.name!r} has no resume_window: nothing to snapshot")
    # A message still being handled (and those queued behind it) is not counted: its
    # turn did not complete, so the peer replays it and the new worker handles it.
    in_flight = stepper.queued
    if stepper.phase in _AWAITING_STATES and not stepper._awaiting_hook:
        in_flight += 1
    entries: tuple[LedgerEntry, ...] = tuple(
        data if origin is None else origin
        for data, origin in zip(replay.retained, ledger.origins, strict=True)
    )
    registry = stepper.registry
    rooms = () if registry is None else sorted(registry.rooms_of(stepper.conn))
    info = room_info or {}
    deadline = stepper._deadline
    state = stepper.conn._state
    return SessionSnapshot(
        flow=flow.name,
        route=route,
        conn_id=stepper.id,
        step=stepper.step,
        step_remaining=None if deadline is None else max(0.0, deadline - now),
        received=max(0, replay.received - in_flight),
        sent=replay.sent,
        acked=replay.acked,
        ledger=entries,
        tail=ledger.last_origin,
        rooms={room: dict(info.get(room, {})) for room in rooms},
        positions={room: ledger.positions[room] for room in rooms if room in ledger.positions},
        window=float(window),
        state=None if state is None else encode_state(flow.state_codec, state, flow.name),
    )


def mark_persisted(stepper: Stepper[Any], snapshot: SessionSnapshot) -> None:
    replay, ledger = ledger_of(stepper)
    if snapshot.conn_id != stepper.id:
        raise LocalProtocolError("that snapshot is of another connection")
    ledger.persisted(snapshot.sent, snapshot.received, snapshot.tail, replay.first_retained)


def _last_origin(snapshot: SessionSnapshot, plan: ResumePlan) -> RoomRef | None:
    """The origin of message number peer_received + len(plan.messages)."""
    if plan.messages:
        return plan.messages[-1][1]
    tail = snapshot.tail
    if tail is None or plan.peer_received < snapshot.sent:
        return None
    return RoomRef(tail.room, tail.epoch, tail.offset + (plan.peer_received - snapshot.sent))


def restore_stepper(
    cls: type[Stepper[Any]],
    flow: Flow[Any],
    snapshot: SessionSnapshot,
    now: float,
    plan: ResumePlan,
    *,
    max_queue: int,
    registry: Registry | None,
    server: Any,
    remote_address: tuple[str, int] | None,
    request: Any,
    run_blocking: Callable[[Any, Connection[Any], bytes], Any] | None,
) -> Stepper[Any]:
    failure = check_restorable(flow, snapshot, snapshot.route)
    if failure is not None:
        raise LocalProtocolError(f"cannot restore this snapshot: {failure.reason}")
    ledger = OutgoingLedger()
    replay = ReplayBuffer.restored(
        flow.max_resume_buffer,
        received=snapshot.received,
        peer_received=plan.peer_received,
        messages=list(plan.messages),
        ledger=ledger,
    )
    ledger.positions = {
        room: plan.positions[room] for room in snapshot.rooms if room in plan.positions
    }
    ledger.last_origin = _last_origin(snapshot, plan)
    stepper = cls(
        flow,
        max_queue=max_queue,
        id=snapshot.conn_id,
        registry=registry,
        server=server,
        remote_address=remote_address,
        request=request,
        replay=replay,
    )
    stepper.run_blocking = run_blocking
    if snapshot.state is not None:
        try:
            stepper.conn.state = flow.state_codec.decode(snapshot.state)
        except Exception as exc:
            raise SnapshotError(
                f"the conn.state of flow {flow.name!r} cannot be decoded by "
                f"{type(flow.state_codec).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
    stepper._place(snapshot.step, snapshot.step_remaining, now)
    stepper._opened = True
    stepper._move(Happening.RESTORED)
    stepper._resume_deadline = now + snapshot.window
    if registry is not None:
        conn = stepper.conn
        registry.add(conn)
        for room in snapshot.rooms:
            registry.join(conn, room)
    return stepper


__all__ = ["ledger_of", "mark_persisted", "restore_stepper", "take_snapshot"]
