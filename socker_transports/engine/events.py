"""The values an engine hands out: positions in a room's stream and what arrives.

A room's stream is numbered 1, 2, 3, ... within an *epoch* (an opaque string the
engine picks when it starts the room's numbering afresh: a new in-process engine, or a
Redis that lost the room's metadata). An offset means something only with its epoch:
`StreamPosition(offset, epoch)`. Offset 0 is "before the first publication".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Why a room's sequence could not be continued without a gap.
#: - "epoch-changed": the engine restarted the room's numbering (Redis lost its data);
#: - "trimmed": the publications after the position are no longer in the bounded history;
#: - "unknown-position": the position is ahead of the engine's (it belongs to another
#:   engine's numbering, e.g. a different Redis).
ResyncReason = Literal["epoch-changed", "trimmed", "unknown-position"]


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a room's stream: the offset of the last publication it covers."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One message published to a room, with its place in the room's total order."""

    room: str
    offset: int
    epoch: str
    data: bytes

    @property
    def position(self) -> StreamPosition:
        """Where this publication stands in its room's stream."""
        return StreamPosition(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class Resync:
    """Delivered instead of silence: this worker missed publications of `room` that
    cannot be replayed. Members' state must be rebuilt by the application; delivery
    goes on with the publications after `position`: the room's position when the gap
    was found, or offset 0 of the new epoch after "epoch-changed" (then everything the
    new numbering holds still arrives)."""

    room: str
    reason: ResyncReason
    position: StreamPosition


#: What an engine delivers to its receiver, in each room's order.
RoomEvent = Publication | Resync


@dataclass(frozen=True, slots=True)
class Recovered:
    """`fetch_since` found every publication after the asked position: `publications`
    (in order, possibly empty) and the room's position `position` after them."""

    publications: tuple[Publication, ...]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class Unrecoverable:
    """`fetch_since` cannot give a complete sequence; `position` is where the room is
    now (continue from there after resyncing)."""

    room: str
    reason: ResyncReason
    position: StreamPosition


FetchResult = Recovered | Unrecoverable
