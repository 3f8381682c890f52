"""Cross-worker resume, the decision: from a snapshot, the client's received count
and the rooms' history, the exact messages the client has not got, or an explicit
refusal with its close code. Pure.

A worker that restores a session it did not run (its worker died, or the load
balancer sent the client elsewhere) does, in order:

1. `check_restorable(flow, snapshot, route)`: the route still serves that flow.
2. `history_needed(snapshot, peer_received)`: for each room, the position to fetch
   history after (`Engine.fetch_since`), or a refusal for an impossible count.
3. `plan_resume(snapshot, peer_received, histories)`: the messages to replay, in
   order (the ledger's after `peer_received`: direct payloads from the snapshot,
   room deliveries from history; then each room's publications the member was
   never sent), and where the member then stands in each room; or a refusal:
   4415 when room messages it missed are gone from history (never a silent gap),
   4413 when they outgrow `max_resume_buffer`.
4. `Stepper.restore(flow, snapshot, now, plan=...)`.

How counts map to messages: the snapshot attributes messages 1..sent. A client
that states more (`peer_received > sent`) got the implicit continuation of the
snapshot's tail (see `_ledger.py`): message `sent + k` was offset `tail.offset + k`
of the tail's room. What a dead worker wrote after that is ignored: every room's
publications after the member's position are delivered again from history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._codes import CloseCode
from ._ledger import RoomRef
from ._snapshot import LedgerEntry, SessionSnapshot

if TYPE_CHECKING:
    from ._flow import Flow


@dataclass(frozen=True, slots=True)
class RoomHistory:
    """What the engine still holds of `room` after offset `after` of `epoch`, as the
    new worker fetched it, each publication's skip list already applied: `messages`
    are (offset, payload) for offsets after+1, after+2, ... in order, the payload
    None where the publication skipped this member. `lost` (the engine's
    Unrecoverable reason: "trimmed", "epoch-changed", ...) means the history cannot
    be complete; `messages` is then ignored."""

    room: str
    epoch: str
    after: int
    messages: tuple[tuple[int, bytes | None], ...] = ()
    lost: str | None = None

    @property
    def end(self) -> int:
        """The offset of the last publication fetched (`after` if none)."""
        return self.messages[-1][0] if self.messages else self.after

    def then(self, later: RoomHistory) -> RoomHistory:
        """This history followed by `later`, fetched after it (a second fetch for
        what arrived meanwhile); overlapping offsets are taken once."""
        if later.room != self.room:
            raise ValueError("histories of different rooms")
        if self.lost is not None:
            return self
        if later.lost is not None or later.epoch != self.epoch or later.after > self.end:
            return RoomHistory(self.room, self.epoch, self.after, (), later.lost or "trimmed")
        end = self.end
        extra = tuple(item for item in later.messages if item[0] > end)
        return RoomHistory(self.room, self.epoch, self.after, self.messages + extra)


@dataclass(frozen=True, slots=True)
class ResumeFailure:
    """The resume cannot be honoured: close the new transport with `code`."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What the new worker replays: `messages` (payload, origin: None for a direct
    send), numbered from `peer_received + 1`; then the member stands at
    `positions` (room -> (epoch, offset)) in each of its rooms."""

    peer_received: int
    messages: tuple[tuple[bytes, RoomRef | None], ...]
    positions: Mapping[str, tuple[str, int]]


def check_restorable(flow: Flow, snapshot: SessionSnapshot, route: str) -> ResumeFailure | None:
    """None when `flow`, served at `route`, can take `snapshot` over."""
    if snapshot.route != route:
        return ResumeFailure(CloseCode.RESUME_REFUSED, "token not valid for this route")
    if flow.resume_window is None or snapshot.flow != flow.name:
        return ResumeFailure(CloseCode.FLOW_CHANGED, "the route serves a different flow now")
    if flow.index_of(snapshot.step) is None:
        return ResumeFailure(CloseCode.FLOW_CHANGED, f"the flow has no step {snapshot.step!r} now")
    return None


def _missing(snapshot: SessionSnapshot, peer_received: int) -> tuple[LedgerEntry, ...] | None:
    """The ledger entries after `peer_received`; None for an impossible count."""
    if peer_received < snapshot.acked:
        return None  # fewer than it acknowledged
    if peer_received <= snapshot.sent:
        return snapshot.ledger[peer_received - snapshot.acked :]
    if snapshot.tail is None:
        return None  # more than was sent, and nothing implicit could follow
    return ()


def _end_position(
    snapshot: SessionSnapshot, peer_received: int, room: str
) -> tuple[str, int] | None:
    """Where the member stands in `room` once it has `peer_received` messages, as far
    as the snapshot tells (the implicit continuation of the tail included)."""
    tail = snapshot.tail
    if peer_received > snapshot.sent and tail is not None and tail.room == room:
        return tail.epoch, tail.offset + (peer_received - snapshot.sent)
    return snapshot.positions.get(room)


def _impossible(snapshot: SessionSnapshot, peer_received: int) -> ResumeFailure:
    return ResumeFailure(
        CloseCode.PROTOCOL_ERROR,
        f"impossible received count {peer_received} (acknowledged {snapshot.acked}, "
        f"sent {snapshot.sent})",
    )


def _lost(room: str, why: str) -> ResumeFailure:
    return ResumeFailure(
        CloseCode.RESUME_HISTORY_LOST, f"missed messages of room {room!r} are gone ({why})"
    )


def history_needed(
    snapshot: SessionSnapshot, peer_received: int
) -> dict[str, tuple[str, int]] | ResumeFailure:
    """room -> (epoch, offset) to fetch history after, for every room the plan needs
    (the member's rooms, and rooms of ledger entries the client has not got)."""
    missing = _missing(snapshot, peer_received)
    if missing is None:
        return _impossible(snapshot, peer_received)
    needs: dict[str, tuple[str, int]] = {}
    for entry in missing:
        if isinstance(entry, RoomRef):
            known = needs.get(entry.room)
            if known is None:
                needs[entry.room] = (entry.epoch, entry.offset - 1)  # the first is the earliest
            elif known[0] != entry.epoch:
                return _lost(entry.room, "its numbering restarted during the session")
    for room in snapshot.rooms:
        end = _end_position(snapshot, peer_received, room)
        if end is None:
            return _lost(room, "no position is known for it")
        known = needs.get(room)
        if known is None:
            needs[room] = end
        elif known[0] != end[0]:
            return _lost(room, "its numbering restarted during the session")
    return needs


def _index(history: RoomHistory) -> dict[int, bytes | None] | None:
    """offset -> payload, or None when the history has a hole."""
    found: dict[int, bytes | None] = {}
    expected = history.after + 1
    for offset, payload in history.messages:
        if offset != expected:
            return None
        found[offset] = payload
        expected += 1
    return found


def plan_resume(
    snapshot: SessionSnapshot,
    peer_received: int,
    histories: Mapping[str, RoomHistory],
    *,
    max_bytes: int,
) -> ResumePlan | ResumeFailure:
    """The exact replay (see the module docstring), from histories fetched after the
    positions `history_needed` gave (or earlier)."""
    needs = history_needed(snapshot, peer_received)
    if isinstance(needs, ResumeFailure):
        return needs
    indexes: dict[str, dict[int, bytes | None]] = {}
    for room, (epoch, after) in needs.items():
        history = histories.get(room)
        if history is None:
            return _lost(room, "its history was not fetched")
        if history.lost is not None:
            return _lost(room, history.lost)
        if history.epoch != epoch or history.after > after:
            return _lost(room, "the history does not reach back far enough")
        index = _index(history)
        if index is None:
            return _lost(room, "the history has a hole")
        indexes[room] = index
    messages: list[tuple[bytes, RoomRef | None]] = []
    missing = _missing(snapshot, peer_received)
    assert missing is not None  # history_needed checked it
    for entry in missing:
        if isinstance(entry, RoomRef):
            payload = indexes[entry.room].get(entry.offset)
            if payload is None:  # absent, or history says it skipped this member
                return _lost(entry.room, f"publication {entry.offset} is not in its history")
            messages.append((payload, entry))
        else:
            messages.append((entry, None))
    positions: dict[str, tuple[str, int]] = {}
    for room in snapshot.rooms:
        position = _end_position(snapshot, peer_received, room)
        assert position is not None  # history_needed checked it
        epoch, end = position
        history = histories[room]
        for offset, payload in history.messages:
            if offset > end and payload is not None:
                messages.append((payload, RoomRef(room, epoch, offset)))
        positions[room] = (epoch, max(end, history.end))
    if sum(len(payload) for payload, _ in messages) > max_bytes:
        return ResumeFailure(
            CloseCode.RESUME_BUFFER_OVERFLOW, "messages to replay outgrew max_resume_buffer"
        )
    return ResumePlan(peer_received, tuple(messages), positions)


__all__ = [
    "ResumeFailure",
    "ResumePlan",
    "RoomHistory",
    "check_restorable",
    "history_needed",
    "plan_resume",
]
