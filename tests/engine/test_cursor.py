"""RoomCursor: the one rule for "deliver, drop a duplicate, or fill a gap first"."""

from __future__ import annotations

import pytest

from socker_transports.engine import (
    Arrival,
    Publication,
    Recovered,
    Resync,
    RoomCursor,
    StreamPosition,
    Unrecoverable,
)


def pub(offset: int, epoch: str = "e1") -> Publication:
    return Publication("r", offset, epoch, f"m{offset}".encode())


def test_next_offset_is_delivered_and_advances() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    assert cursor.classify(pub(4)) is Arrival.DELIVER
    assert cursor.accept(pub(4)) == [pub(4)]
    assert cursor.position == StreamPosition(4, "e1")


def test_old_offsets_are_duplicates() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    assert cursor.accept(pub(3)) == []
    assert cursor.accept(pub(1)) == []
    assert cursor.position == StreamPosition(3, "e1")


def test_a_hole_or_another_epoch_is_a_gap_that_accept_refuses() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    assert cursor.classify(pub(5)) is Arrival.GAP
    assert cursor.classify(pub(4, "e2")) is Arrival.GAP
    with pytest.raises(ValueError):
        cursor.accept(pub(5))


def test_recovered_history_fills_the_gap_without_duplicates() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    events = cursor.apply_fetch(Recovered((pub(3), pub(4), pub(5)), StreamPosition(5, "e1")))
    assert events == [pub(4), pub(5)]
    assert cursor.position == StreamPosition(5, "e1")


def test_unrecoverable_becomes_one_resync_and_moves_on() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    now = StreamPosition(9, "e2")
    # After an epoch change delivery goes on from the start of the new numbering.
    assert cursor.apply_fetch(Unrecoverable("r", "epoch-changed", now)) == [
        Resync("r", "epoch-changed", StreamPosition(0, "e2"))
    ]
    assert cursor.classify(pub(1, "e2")) is Arrival.DELIVER
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    assert cursor.apply_fetch(Unrecoverable("r", "trimmed", StreamPosition(9, "e1"))) == [
        Resync("r", "trimmed", StreamPosition(9, "e1"))
    ]
    assert cursor.classify(pub(10)) is Arrival.DELIVER


def test_an_incomplete_recovery_is_never_silent() -> None:
    cursor = RoomCursor("r", StreamPosition(3, "e1"))
    events = cursor.apply_fetch(Recovered((pub(4),), StreamPosition(6, "e1")))
    assert events == [pub(4), Resync("r", "trimmed", StreamPosition(6, "e1"))]


def test_a_stale_unrecoverable_after_the_gap_was_filled_changes_nothing() -> None:
    cursor = RoomCursor("r", StreamPosition(7, "e1"))
    assert cursor.apply_fetch(Unrecoverable("r", "trimmed", StreamPosition(6, "e1"))) == []
    assert cursor.position == StreamPosition(7, "e1")
