"""Where a worker stands in each subscribed room's stream, and what an arriving
publication means: deliver it, drop it (already delivered), or fill a gap first.

Pure (no I/O): the Redis engine feeds it what arrives live and what it fetched from
history, and delivers what it returns. Keeping the decision here makes "no silent gap,
no duplicate" one rule, tested on its own.
"""

from __future__ import annotations

from enum import Enum

from .events import FetchResult, Publication, Recovered, Resync, RoomEvent, StreamPosition


class Arrival(Enum):
    """What an arriving publication means for a room's cursor (`RoomCursor.classify`)."""

    DELIVER = "deliver"  # the next publication: deliver it and advance
    DUPLICATE = "duplicate"  # at or before the cursor: already delivered (or resynced past)
    GAP = "gap"  # after a hole, or in another epoch: fetch history first


class RoomCursor:
    """The position of the last event delivered for one room on this worker."""

    __slots__ = ("position", "room")

    def __init__(self, room: str, position: StreamPosition) -> None:
        self.room = room
        self.position = position

    def classify(self, publication: Publication) -> Arrival:
        """Deliver it (the next one), drop it (a duplicate), or fill a gap first."""
        if publication.epoch != self.position.epoch:
            return Arrival.GAP
        if publication.offset <= self.position.offset:
            return Arrival.DUPLICATE
        if publication.offset == self.position.offset + 1:
            return Arrival.DELIVER
        return Arrival.GAP

    def accept(self, publication: Publication) -> list[RoomEvent]:
        """The events to deliver for a publication that arrived (empty for a
        duplicate); a GAP must be resolved with `apply_fetch` first."""
        arrival = self.classify(publication)
        if arrival is Arrival.DELIVER:
            self.position = publication.position
            return [publication]
        if arrival is Arrival.DUPLICATE:
            return []
        raise ValueError("a gap: fetch history and apply_fetch() before accepting")

    def apply_fetch(self, result: FetchResult) -> list[RoomEvent]:
        """The events to deliver after fetching history since this cursor: the
        publications not yet delivered, or one `Resync` that moves the cursor to the
        room's current position."""
        if isinstance(result, Recovered):
            events: list[RoomEvent] = []
            for publication in result.publications:
                if self.classify(publication) is Arrival.DELIVER:
                    self.position = publication.position
                    events.append(publication)
            if result.position.epoch == self.position.epoch and (
                result.position.offset > self.position.offset
            ):
                # The fetch was incomplete after all (cannot happen with a correct
                # store, but never skip silently).
                self.position = result.position
                events.append(Resync(self.room, "trimmed", result.position))
            return events
        if result.position.epoch == self.position.epoch and (
            result.position.offset <= self.position.offset
        ):
            return []  # a stale answer: the cursor already moved past the gap
        if result.reason == "epoch-changed":
            # Only the old numbering's tail is lost: go on from the start of the new
            # epoch, so a fetch from there can still deliver everything in it.
            self.position = StreamPosition(0, result.position.epoch)
        else:
            self.position = result.position
        return [Resync(self.room, result.reason, self.position)]
