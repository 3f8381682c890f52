"""The outgoing ledger: where each message a resumable session sent came from, and
which of them a persisted snapshot can still attribute after its worker dies.

A message a server connection sends is either a *direct* send (`conn.send`: its
payload exists nowhere else, so it is kept until the peer acknowledges it) or a
*room delivery* (a publication of a room's stream, named by `RoomRef`: the
engine's history holds its payload, so another worker can fetch it again).

Cross-worker resume restores a session from the last snapshot its worker persisted
(`Stepper.snapshot`, `Stepper.persisted`). After a kill -9 the client says how many
messages it received; the new worker must know what each of them was. The
**write-ahead rule** makes that possible without one store write per message:

- A snapshot records the ledger up to its `sent` count, and its `tail`: the room
  delivery that was message number `sent`, if it was one.
- A later message is *implicit* when it continues the persisted tail: the next
  offset of the same room in the same epoch, right after the previous implicit
  one. The new worker attributes those by counting (message `sent + k` is offset
  `tail.offset + k`). Steady broadcast traffic of one room needs no store write.
- Any other message (a direct send, another room, another epoch, a skipped offset)
  can only be attributed by a newer snapshot: it is *not durable*, and its frame
  must not be written before a snapshot that covers it is persisted
  (`ReplayBuffer.needs_persist`, `durable_sent`).

The ledger also holds each room's last delivered position (what the member has
been sent of that room), so the new worker knows where to resume each stream, and
`durable_received`: the received count of the persisted snapshot, the most an
acknowledgement may state (the peer forgets what we acknowledge; after a kill the
new worker starts from the snapshot's count and needs the peer to replay the rest).

Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class RoomRef:
    """A room delivery's origin: publication `offset` of `room`'s stream in `epoch`
    (the engine's `Publication.room/offset/epoch`)."""

    room: str
    epoch: str
    offset: int

    def follows(self, previous: RoomRef) -> bool:
        """True when this is the publication right after `previous` in its stream."""
        return (
            self.offset == previous.offset + 1
            and self.room == previous.room
            and self.epoch == previous.epoch
        )


def check_ref(room: object, epoch: object, offset: object) -> RoomRef:
    """A RoomRef from untrusted parts (LocalProtocolError when malformed)."""
    if not isinstance(room, str) or not room:
        raise LocalProtocolError(f"a room name is a non-empty string, got {room!r}")
    if not isinstance(epoch, str):
        raise LocalProtocolError(f"an epoch is a string, got {epoch!r}")
    if type(offset) is not int or offset < 1:
        raise LocalProtocolError(f"a publication offset is an int >= 1, got {offset!r}")
    return RoomRef(room, epoch, offset)


class OutgoingLedger:
    """One server session's outgoing ledger (see the module docstring).

    `origins` runs parallel to the ReplayBuffer's retained messages (None for a
    direct send); the ReplayBuffer keeps the two in step. The rest is per session.
    """

    __slots__ = (
        "durable_received",
        "durable_sent",
        "durable_tail",
        "last_origin",
        "origins",
        "positions",
    )

    def __init__(self) -> None:
        #: Origins of the retained (unacknowledged) messages, oldest first.
        self.origins: deque[RoomRef | None] = deque()
        #: room -> (epoch, offset): the last publication sent to this member, or
        #: where its membership started (`joined_at`).
        self.positions: dict[str, tuple[str, int]] = {}
        #: The origin of the last message sent (None: a direct send, or none yet);
        #: kept after it is acknowledged: it is the snapshot's tail.
        self.last_origin: RoomRef | None = None
        #: Messages 1..durable_sent can be attributed by the persisted snapshot
        #: (their frames may be written).
        self.durable_sent = 0
        #: The received count of the persisted snapshot (the most an ack may say).
        self.durable_received = 0
        #: The last implicit message's origin (the persisted tail, extended).
        self.durable_tail: RoomRef | None = None

    def admits(self, ref: RoomRef) -> bool:
        """False when this member was already sent `ref` (or a later publication of
        its room in that epoch): the overlap of fetched history and live delivery."""
        known = self.positions.get(ref.room)
        return known is None or known[0] != ref.epoch or ref.offset > known[1]

    def joined_at(self, room: str, epoch: str, offset: int) -> None:
        """The member's deliveries in `room` start after (epoch, offset): kept unless
        a delivery already placed it (a join repeated, or reported late)."""
        self.positions.setdefault(room, (epoch, offset))  # one step: safe from threads

    def left(self, room: str) -> None:
        """The member left `room`: nothing more to resume there."""
        self.positions.pop(room, None)

    def record(self, number: int, origin: RoomRef | None) -> None:
        """Message `number` (1-based) was just sent, from `origin` (None: direct)."""
        self.origins.append(origin)
        self.last_origin = origin
        if origin is not None:
            self.positions[origin.room] = (origin.epoch, origin.offset)
            tail = self.durable_tail
            if number == self.durable_sent + 1 and tail is not None and origin.follows(tail):
                self.durable_sent = number  # implicit: the persisted snapshot counts it
                self.durable_tail = origin

    def persisted(self, sent: int, received: int, tail: RoomRef | None, first: int) -> None:
        """A snapshot taken at `sent` messages (`received` received, `tail` the
        origin of message `sent`) is in the store. `first` is the number of the
        oldest retained message (origins[0]). Messages after `sent` that continue
        its tail become durable too; an older snapshot changes nothing."""
        if sent < self.durable_sent:
            return
        self.durable_received = max(self.durable_received, received)
        self.durable_sent = sent
        self.durable_tail = tail
        if tail is None:
            return
        origins = self.origins
        index = sent + 1 - first
        while 0 <= index < len(origins):
            origin = origins[index]
            if origin is None or not origin.follows(tail):
                break
            tail = origin
            self.durable_sent += 1
            index += 1
        self.durable_tail = tail

    def __repr__(self) -> str:
        return (
            f"<OutgoingLedger durable_sent={self.durable_sent} "
            f"durable_received={self.durable_received} rooms={len(self.positions)}>"
        )


__all__ = ["OutgoingLedger", "RoomRef", "check_ref"]
