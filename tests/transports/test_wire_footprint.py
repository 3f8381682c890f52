"""What an idle open connection keeps: a slotted Wire, its Stepper, its frame
reader, and nothing handshake-only."""

from __future__ import annotations

import gc
import tracemalloc

from socker_transports.wire import Options, Wire
from tests.transports.wire_peer import echo_flow, frame, parse_frames, upgrade_request

#: Bytes one idle open server connection may hold (about 1.7 KiB on CPython 3.11; an
#: empty deque alone is ~760 bytes and a materialized instance dict ~1.5 KiB).
IDLE_BUDGET = 3000


FLOW = echo_flow()


def open_server(options: Options | None = None) -> Wire:
    wire = Wire.server(FLOW, 0.0, options)
    wire.receive_data(upgrade_request("/room?x=1"), 0.0)
    assert wire.is_open
    wire.data_to_send()
    wire.events()
    return wire


def test_an_idle_open_connection_stays_within_its_budget() -> None:
    options = Options()
    open_server(options)  # warm up: caches, interned strings
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        wires = [open_server(options) for _ in range(200)]
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_connection = (grown - len(wires) * 8) / len(wires)
    assert per_connection < IDLE_BUDGET, per_connection


def test_handshake_state_is_dropped_once_open() -> None:
    wire = open_server()
    assert not hasattr(wire, "__dict__")
    assert wire._guard is None and wire._request is None
    assert wire._pending_after_head == b"" and wire._key == b""
    assert wire._held is None and wire._reader is not None and not wire._reader.in_message
    assert wire.stepper is not None and wire.stepper.conn._state is None  # made on first use
    assert wire.path == "/room"


def test_fragments_and_held_messages_are_made_on_demand() -> None:
    wire = open_server()
    wire.receive_data(frame(b"one ", fin=False) + frame(b"two", opcode=0x0), 0.0)
    assert wire._reader is not None and wire._reader.pending_size == 0
    out = parse_frames(bytes(wire.data_to_send()), client=True)
    assert [payload for _, payload, _ in out] == [b"one two"]
