"""What an idle open connection keeps: a slotted Wire, its Stepper, wsproto's
frame-level Connection, and nothing handshake-only."""

from __future__ import annotations

import gc
import tracemalloc

from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection

from socker_transports.wire import Options, Wire
from socker_transports.wire.frames import _frame_connection
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
    assert wire._held is None and wire._parts is None
    assert wire.stepper is not None and wire.stepper.conn._state is None  # made on first use
    assert wire.path == "/room"


def test_the_frame_connection_still_reports_end_of_stream() -> None:
    # wsproto's own event deque is replaced by a lazy one; it must behave the same.
    ws = _frame_connection(ConnectionType.SERVER, frame(b"early"))
    events = list(ws.events())
    assert [bytes(e.data) for e in events] == [b"early"]  # type: ignore[attr-defined]
    ws.receive_data(None)
    [closed] = list(ws.events())
    assert isinstance(closed, CloseConnection) and closed.code == 1006


def test_fragments_and_held_messages_are_made_on_demand() -> None:
    wire = open_server()
    wire.receive_data(frame(b"one ", fin=False) + frame(b"two", opcode=0x0), 0.0)
    assert wire._parts is None
    out = parse_frames(bytes(wire.data_to_send()), client=True)
    assert [payload for _, payload, _ in out] == [b"one two"]
