"""Wire: the close handshake both ways, timeouts, EOF, backpressure and overflow."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
from wsproto.events import BytesMessage, CloseConnection
from wsproto.frame_protocol import Opcode

from socker_core import (
    Await,
    CancelAwait,
    Closed,
    Connection,
    ConnectionClosedError,
    Flow,
    LocalProtocolError,
)
from socker_transports.wire import SEND_BUFFER_OVERFLOW, Phase, Wire
from tests.transports.wire_peer import (
    Record,
    close_frame,
    close_payload,
    echo_flow,
    frame,
    open_client,
    open_server,
    parse_frames,
    to_peer,
)


def written(wire: Wire, *, client_reads: bool = True) -> list[tuple[Opcode, bytes, bool]]:
    return parse_frames(bytes(wire.data_to_send()), client=client_reads)


def only_closed(wire: Wire) -> Closed:
    [closed] = [e for e in wire.events() if isinstance(e, Closed)]
    return closed


def completing_flow(record: Record) -> Flow:
    """One step that advances: the first message completes the flow (1000)."""
    flow = Flow("once")

    @flow.step
    def only(conn: Connection, message: bytes) -> bool:
        record.messages.append(message)
        return True

    @flow.on_close
    def closed(conn: Connection) -> None:
        record.closes.append((conn.close_code, conn.close_reason))

    return flow


# -- server ------------------------------------------------------------------------------


def test_peer_initiated_close_is_echoed_and_the_server_drops_tcp_at_once() -> None:
    wire, record = open_server()
    wire.receive_data(close_frame(1001, b"going"), 0.0)
    assert written(wire) == [(Opcode.CLOSE, close_payload(1001, "going"), True)]
    assert wire.should_close_transport and wire.finished and wire.phase is Phase.DONE
    closed = only_closed(wire)
    assert (closed.code, closed.reason, closed.initiated_locally) == (1001, "going", False)
    assert record.closes == [(1001, "going")]
    wire.receive_data(None, 0.1)  # the EOF that follows changes nothing
    assert record.closes == [(1001, "going")] and wire.result.code == 1001


def test_empty_close_frame_is_1005_and_echoed_empty() -> None:
    wire, record = open_server()
    wire.receive_data(close_frame(None), 0.0)
    assert written(wire) == [(Opcode.CLOSE, b"", True)]
    assert record.closes == [(1005, "")]


def test_peer_private_code_and_reason_are_reported() -> None:
    wire, record = open_server()
    wire.receive_data(close_frame(4321, "ciao ✓".encode()), 0.0)
    assert record.closes == [(4321, "ciao ✓")]


def test_server_initiated_close_waits_for_the_peer() -> None:
    record = Record()
    wire, _ = open_server(completing_flow(record), record=record, close_timeout=5.0)
    wire.receive_data(frame(b"done"), 10.0)
    assert written(wire) == [(Opcode.CLOSE, close_payload(1000, "flow complete"), True)]
    assert wire.phase is Phase.CLOSING and wire.wants_data and not wire.should_close_transport
    assert wire.next_deadline == 15.0
    assert record.closes == []  # on_close runs when the transport confirms
    wire.receive_data(frame(b"late data is discarded"), 10.1)
    assert record.messages == [b"done"]
    wire.receive_data(close_frame(1000), 10.2)
    assert wire.should_close_transport and wire.finished
    assert wire.data_to_send() == b""  # no second close frame
    closed = only_closed(wire)
    assert (closed.code, closed.initiated_locally) == (1000, True)
    assert wire.result.ok


def test_server_close_timeout_expiry() -> None:
    wire, record = open_server(close_timeout=2.0)
    wire.close(1001, "shutdown", 1.0)
    assert written(wire) == [(Opcode.CLOSE, close_payload(1001, "shutdown"), True)]
    wire.tick(2.99)
    assert not wire.should_close_transport
    wire.tick(3.0)
    assert wire.should_close_transport and wire.finished
    assert record.closes == [(1001, "shutdown")]  # the code we sent
    assert wire.next_deadline is None


def test_both_sides_close_at_once() -> None:
    wire, record = open_server()
    wire.close(1000, "", 0.0)
    wire.receive_data(close_frame(1001), 0.1)  # crossed in flight: counts as the answer
    assert wire.finished and record.closes == [(1000, "")]


def test_ping_after_our_close_is_not_answered() -> None:
    wire, _ = open_server()
    wire.close(1000, "", 0.0)
    wire.data_to_send()
    wire.receive_data(frame(b"p", 0x9), 0.1)
    assert wire.data_to_send() == b""


# -- client ------------------------------------------------------------------------------


def test_client_initiated_close_then_waits_for_the_servers_eof() -> None:
    wire, server, record = open_client(close_timeout=4.0)
    wire.close(1000, "bye", 1.0)
    [event] = to_peer(wire, server)
    assert isinstance(event, CloseConnection) and event.code == 1000
    assert wire.phase.value == "closing"
    wire.receive_data(server.send(event.response()), 2.0)
    assert wire.phase is Phase.DRAINING and not wire.should_close_transport
    assert wire.wants_data and wire.next_deadline == 6.0
    assert record.closes == [(1000, "bye")]  # the flow ended with the close handshake
    wire.receive_data(b"anything after the close frame", 2.5)  # ignored
    wire.receive_data(None, 3.0)
    assert wire.should_close_transport and wire.finished and wire.result.ok
    assert record.closes == [(1000, "bye")]


def test_client_draining_is_bounded_by_close_timeout() -> None:
    wire, server, record = open_client(close_timeout=4.0, ping_interval=1.0)
    wire.receive_data(server.send(CloseConnection(1000)), 0.5)  # server closes first
    [echo] = to_peer(wire, server)
    assert isinstance(echo, CloseConnection) and echo.code == 1000
    assert wire.phase is Phase.DRAINING
    assert wire.next_deadline == 4.5  # keepalive stopped: no ping deadline left behind
    wire.tick(1.0)
    assert wire.data_to_send() == b""
    wire.tick(4.5)
    assert wire.should_close_transport and wire.finished
    assert record.closes == [(1000, "")] and wire.result.code == 1000


def test_client_close_timeout_without_an_answer() -> None:
    wire, _server, record = open_client(close_timeout=1.0)
    wire.close(4001, "", 0.0)
    wire.tick(1.0)
    assert wire.finished and record.closes == [(4001, "")]


# -- EOF, abort, sends while closing -------------------------------------------------------


def test_eof_while_open_is_1006_and_on_close_runs_once() -> None:
    wire, record = open_server()
    wire.receive_data(b"", 1.0)
    assert wire.finished and not wire.wants_data
    closed = only_closed(wire)
    assert (closed.code, closed.initiated_locally) == (1006, False)
    assert record.closes == [(1006, "connection lost")]
    wire.receive_data(None, 2.0)
    wire.abort(2.0)
    wire.close(1000, "", 2.0)
    wire.tick(100.0)
    assert record.closes == [(1006, "connection lost")]
    assert wire.events() == [] and wire.data_to_send() == b""


def test_eof_mid_fragment() -> None:
    wire, record = open_server()
    wire.receive_data(frame(b"part", fin=False) + frame(b"", length=100)[:3], 0.0)
    wire.receive_data(None, 0.1)
    assert record.messages == [] and record.closes == [(1006, "connection lost")]


def test_eof_while_closing() -> None:
    wire, record = open_server()
    wire.close(1000, "", 0.0)
    wire.receive_data(None, 0.1)
    assert wire.finished and record.closes == [(1000, "")]


def test_abort_while_open() -> None:
    wire, record = open_server()
    wire.abort(0.0, "reset by peer")
    assert wire.finished and record.closes == [(1006, "reset by peer")]


def test_sends_while_closing_raise_connection_closed_error() -> None:
    wire, _ = open_server()
    wire.close(1000, "", 0.0)
    with pytest.raises(ConnectionClosedError):
        wire.send(b"x", 0.1)
    assert wire.stepper is not None
    with pytest.raises(ConnectionClosedError):
        wire.stepper.conn.send(b"x")
    wire.receive_data(close_frame(1000), 0.2)
    with pytest.raises(ConnectionClosedError):
        wire.send(b"x", 0.3)
    pending = Wire.server(echo_flow(), 0.0)
    with pytest.raises(ConnectionClosedError):
        pending.send(b"x", 0.0)


def test_client_send_while_draining_raises() -> None:
    wire, server, _ = open_client()
    wire.receive_data(server.send(CloseConnection(1000)), 0.0)
    with pytest.raises(ConnectionClosedError):
        wire.send(b"x", 0.0)


def test_close_with_an_unsendable_code_is_misuse() -> None:
    wire, _ = open_server()
    with pytest.raises(LocalProtocolError):
        wire.close(1006, "", 0.0)
    assert wire.is_open


def test_resume_before_the_flow_is_misuse() -> None:
    wire = Wire.server(echo_flow(), 0.0)
    with pytest.raises(LocalProtocolError):
        wire.resume(1, None, 0.0)
    with pytest.raises(LocalProtocolError):
        wire.resume_error(1, ValueError(), 0.0)


# -- backpressure ------------------------------------------------------------------------------


async def _later() -> bool:  # pragma: no cover - the tests resume by hand
    return False


def async_flow(record: Record) -> Flow:
    flow = Flow("async")

    @flow.step
    def slow(conn: Connection, message: bytes) -> Awaitable[bool]:
        record.messages.append(message)
        conn.send(b"ack:" + message)
        return _later()

    @flow.on_close
    def closed(conn: Connection) -> None:
        record.closes.append((conn.close_code, conn.close_reason))

    return flow


def take_awaits(wire: Wire) -> list[Await]:
    awaits = [e for e in wire.events() if isinstance(e, Await)]
    for pending in awaits:
        pending.awaitable.close()  # type: ignore[attr-defined]
    return awaits


def test_backpressure_holds_messages_in_order_and_resumes() -> None:
    record = Record()
    wire, _ = open_server(async_flow(record), record=record, max_queue=2)
    wire.receive_data(b"".join(frame(bytes([i])) for i in range(6)), 0.0)
    # 0 runs; 1 and 2 queue in the stepper; 3, 4, 5 are held by the wire.
    assert record.messages == [b"\x00"]
    assert not wire.wants_data
    token = take_awaits(wire)[0].token
    for expected in range(1, 6):
        wire.resume(token, False, 1.0)
        assert record.messages[-1] == bytes([expected])
        token = take_awaits(wire)[0].token
    assert wire.wants_data  # nothing waits any more (the handler is pending, queue empty)
    acks = [p for _, p, _ in written(wire)]
    assert acks == [b"ack:" + bytes([i]) for i in range(6)]


def test_closing_drops_held_messages_so_the_close_can_be_read() -> None:
    record = Record()
    flow = async_flow(record)
    wire, _ = open_server(flow, record=record, max_queue=1)
    wire.receive_data(b"".join(frame(bytes([i])) for i in range(4)), 0.0)
    assert not wire.wants_data
    take_awaits(wire)
    wire.close(1001, "", 1.0)
    assert any(isinstance(e, CancelAwait) for e in wire.events())
    assert wire.wants_data  # must read on to see the peer's close frame
    wire.receive_data(close_frame(1001), 1.1)
    assert wire.finished and record.messages == [b"\x00"]


def test_eof_while_a_handler_is_pending_cancels_it() -> None:
    record = Record()
    wire, _ = open_server(async_flow(record), record=record)
    wire.receive_data(frame(b"x"), 0.0)
    [pending] = take_awaits(wire)
    wire.receive_data(None, 0.5)
    events = wire.events()
    assert CancelAwait(pending.token) in events
    assert record.closes == [(1006, "connection lost")]
    wire.resume(pending.token, True, 0.6)  # a late resume is ignored
    assert record.closes == [(1006, "connection lost")]


def test_write_limit_pauses_reading_until_the_driver_takes_the_output() -> None:
    wire, _record = open_server(write_limit=1000)
    wire.receive_data(frame(b"a" * 600), 0.0)
    assert wire.wants_data
    wire.receive_data(frame(b"b" * 600), 0.0)
    assert not wire.wants_data and wire.buffered_amount >= 1000
    wire.data_to_send()
    assert wire.wants_data


def test_max_send_buffer_overflow_is_4503_and_drops() -> None:
    wire, record = open_server(max_send_buffer=10_000, write_limit=1000)
    for _ in range(9):
        wire.send(b"x" * 1000, 5.0)
    assert wire.is_open
    wire.send(b"x" * 1000, 5.0)
    assert wire.should_close_transport and wire.finished
    assert wire.data_to_send() == b""  # nothing more is worth sending
    closed = only_closed(wire)
    assert closed.code == SEND_BUFFER_OVERFLOW
    assert record.closes == [(4503, "send buffer overflow: peer not reading")]
    with pytest.raises(ConnectionClosedError):
        wire.send(b"x", 5.0)


def test_overflow_from_a_handler_mid_event_list() -> None:
    flow = Flow("flood")

    @flow.step
    def flood(conn: Connection, message: bytes) -> bool:
        for _ in range(20):
            conn.send(b"y" * 1000)
        return True  # completes: CloseRequested follows the sends

    wire, _ = open_server(flow, max_send_buffer=5000)
    wire.receive_data(frame(b"go"), 0.0)
    assert wire.finished and wire.data_to_send() == b""
    assert wire.phase is Phase.DONE


def test_collect_takes_sends_made_outside_a_call() -> None:
    wire, _record = open_server()
    woke: list[int] = []
    wire.wakeup = lambda: woke.append(1)
    assert wire.stepper is not None
    wire.stepper.conn.send(b"from app code")  # outside any Wire call
    assert woke == [1] and wire.data_to_send() == b""
    wire.collect(0.0)
    assert written(wire) == [(Opcode.BINARY, b"from app code", True)]


def test_a_full_session_against_wsproto() -> None:
    wire, server, record = open_client()
    for i in range(5):
        wire.send(bytes([i]) * i, float(i))
        [got] = to_peer(wire, server)
        assert isinstance(got, BytesMessage) and got.data == bytes([i]) * i
        wire.receive_data(server.send(BytesMessage(b"r" + got.data)), float(i))
        [echoed] = to_peer(wire, server)  # the client's echo flow answers
        assert isinstance(echoed, BytesMessage) and echoed.data == b"r" + got.data
    assert record.messages == [b"r" + bytes([i]) * i for i in range(5)]
