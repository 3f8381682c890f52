"""Wire: data frames, control frames, limits and protocol errors, both roles."""

from __future__ import annotations

import os

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import Opcode

from socker_core import Closed, Connection, Flow
from socker_transports.wire import KEEPALIVE_TIMEOUT_REASON, Phase, Wire
from tests.transports.wire_peer import (
    Record,
    close_frame,
    close_payload,
    frame,
    open_client,
    open_server,
    parse_frames,
    to_peer,
)


def written(wire: Wire, *, client_reads: bool = True) -> list[tuple[Opcode, bytes, bool]]:
    return parse_frames(bytes(wire.data_to_send()), client=client_reads)


def assert_failed(wire: Wire, record: Record, code: int) -> None:
    """The server failed the connection: a close frame with `code`, transport dropped."""
    frames = written(wire)
    assert frames[-1][0] is Opcode.CLOSE and frames[-1][1][:2] == code.to_bytes(2, "big")
    assert wire.should_close_transport and wire.finished
    assert [c for c, _ in record.closes] == [code]
    [closed] = [e for e in wire.events() if isinstance(e, Closed)]
    assert closed.code == code and closed.initiated_locally


# -- data ----------------------------------------------------------------------------------


def test_binary_echo_server_frames_are_unmasked_and_exact() -> None:
    wire, record = open_server()
    wire.receive_data(frame(b"abc"), 0.0)
    out = bytes(wire.data_to_send())
    assert out == b"\x82\x03abc"  # FIN + binary, unmasked, 3 bytes
    assert record.messages == [b"abc"]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_lengths_round_trip_through_wsproto(size: int) -> None:
    payload = os.urandom(size)
    wire, _record = open_server()
    wire.send(payload, 0.0)
    [(opcode, data, fin)] = written(wire)
    assert (opcode, data, fin) == (Opcode.BINARY, payload, True)
    cwire, server, _crecord = open_client(max_size=None)
    cwire.send(payload, 0.0)
    [event] = to_peer(cwire, server)  # the wsproto server unmasks it
    assert isinstance(event, BytesMessage) and event.data == payload


def test_send_copies_a_mutable_buffer() -> None:
    wire, _ = open_server()
    buffer = bytearray(b"before")
    wire.send(buffer, 0.0)  # type: ignore[arg-type]
    buffer[:] = b"AFTER!"
    assert written(wire)[0][1] == b"before"


def test_data_to_send_joins_once_and_drains() -> None:
    wire, _ = open_server()
    for i in range(3):
        wire.send(bytes([i]) * 10, 0.0)
    assert wire.buffered_amount == 3 * 12
    out = wire.data_to_send()
    assert isinstance(out, bytes) and len(out) == 36
    assert wire.buffered_amount == 0 and wire.data_to_send() == b""


def test_fragmented_message_is_reassembled_with_a_ping_in_between() -> None:
    wire, record = open_server()
    data = (
        frame(b"he", 0x2, fin=False)
        + frame(b"ll", 0x0, fin=False)
        + frame(b"ping!", 0x9)
        + frame(b"o", 0x0, fin=True)
    )
    for i in range(0, len(data), 3):  # arbitrary read boundaries
        wire.receive_data(data[i : i + 3], 0.0)
    assert record.messages == [b"hello"]
    frames = written(wire)
    assert frames[0] == (Opcode.PONG, b"ping!", True)
    assert frames[1] == (Opcode.BINARY, b"hello", True)


def test_empty_fragments_and_empty_message() -> None:
    wire, record = open_server()
    wire.receive_data(frame(b"", 0x2, fin=False) + frame(b"", 0x0) + frame(b""), 0.0)
    assert record.messages == [b"", b""]


def test_text_is_refused_with_1003_by_default() -> None:
    wire, record = open_server()
    wire.receive_data(frame("hé".encode(), 0x1), 0.0)
    frames = written(wire)
    assert frames == [(Opcode.CLOSE, close_payload(1003, "text messages are not accepted"), True)]
    assert record.messages == []
    assert wire.phase is Phase.CLOSING and wire.wants_data  # waits for the peer's close
    wire.receive_data(close_frame(1003), 0.1)
    assert wire.finished and record.closes == [(1003, "text messages are not accepted")]


def test_text_accepted_as_str_even_split_inside_a_code_point() -> None:
    wire, record = open_server(accept_text=True)
    encoded = "héllo €".encode()
    cut = encoded.index("€".encode()) + 1
    wire.receive_data(frame(encoded[:cut], 0x1, fin=False) + frame(encoded[cut:], 0x0), 0.0)
    assert record.messages == ["héllo €"]
    assert written(wire) == [(Opcode.TEXT, encoded, True)]  # a str is sent as text


def test_invalid_utf8_text_is_1007_then_the_peers_close_is_read() -> None:
    # The framing still holds: the server closes with 1007, skips what follows and
    # reads the peer's close reply (a conforming peer's answer, not met with a reset).
    wire, record = open_server(accept_text=True)
    wire.receive_data(frame(b"\xff\xfe", 0x1) + frame(b"late", 0x2), 0.0)
    frames = written(wire)
    assert frames[-1][0] is Opcode.CLOSE and frames[-1][1][:2] == (1007).to_bytes(2, "big")
    assert wire.phase is Phase.CLOSING and wire.wants_data and record.messages == []
    wire.receive_data(close_frame(1007), 0.1)
    assert wire.finished and record.closes[0][0] == 1007


def test_invalid_utf8_close_reason_is_1007() -> None:
    wire, record = open_server()
    wire.receive_data(close_frame(1000, b"\xc3("), 0.0)
    assert_failed(wire, record, 1007)


# -- max_size -------------------------------------------------------------------------------


def test_max_size_exactly_is_fine() -> None:
    wire, record = open_server(max_size=100)
    wire.receive_data(frame(b"x" * 60, 0x2, fin=False) + frame(b"y" * 40, 0x0), 0.0)
    assert record.messages == [b"x" * 60 + b"y" * 40]


def test_a_frame_arriving_in_pieces_is_not_counted_twice() -> None:
    wire, record = open_server(max_size=100)
    data = frame(b"z" * 80)
    wire.receive_data(data[:40], 0.0)
    wire.receive_data(data[40:], 0.0)
    assert record.messages == [b"z" * 80]
    assert wire.is_open


def test_max_size_while_fragments_arrive_is_1009() -> None:
    wire, record = open_server(max_size=100)
    wire.receive_data(frame(b"x" * 60, 0x2, fin=False), 0.0)
    assert wire.is_open
    wire.receive_data(frame(b"y" * 41, 0x0, fin=False), 0.0)
    frames = written(wire)
    assert frames == [(Opcode.CLOSE, close_payload(1009, "message larger than 100 bytes"), True)]
    assert wire.phase is Phase.CLOSING and record.messages == []
    # The rest of the message is discarded; the peer's close answer finishes it.
    wire.receive_data(frame(b"z" * 50, 0x0) + frame(b"after") + close_frame(1009), 0.1)
    assert wire.finished and record.messages == []
    assert record.closes == [(1009, "message larger than 100 bytes")]


def test_announced_oversize_frame_is_refused_from_its_header_alone() -> None:
    wire, _record = open_server(max_size=1000)
    header = frame(b"", 0x2, length=10_000_000)  # the header claims 10 MB; no payload sent
    wire.receive_data(header, 0.0)
    frames = written(wire)
    assert frames[0][0] is Opcode.CLOSE and frames[0][1][:2] == b"\x03\xf1"  # 1009
    assert wire.phase is Phase.CLOSING


def test_announced_continuation_past_max_size() -> None:
    wire, _record = open_server(max_size=100)
    wire.receive_data(frame(b"a" * 90, 0x2, fin=False) + frame(b"", 0x0, length=20), 0.0)
    assert written(wire)[0][1][:2] == (1009).to_bytes(2, "big")


def test_max_size_none_allows_large_messages() -> None:
    wire, record = open_server(max_size=None)
    wire.receive_data(frame(b"q" * 200_000), 0.0)
    assert record.messages == [b"q" * 200_000]


def test_client_max_size_too() -> None:
    wire, server, _record = open_client(max_size=10)
    wire.receive_data(server.send(BytesMessage(b"x" * 11)), 0.0)
    [event] = to_peer(wire, server)
    assert isinstance(event, CloseConnection) and event.code == 1009


# -- protocol errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame(b"hi", mask=False), id="unmasked-client-frame"),
        pytest.param(frame(b"hi", rsv=4), id="rsv1"),
        pytest.param(frame(b"hi", rsv=1), id="rsv3"),
        pytest.param(frame(b"hi", 0x3), id="opcode-3"),
        pytest.param(frame(b"hi", 0xB), id="opcode-b"),
        pytest.param(frame(b"hi", 0x9, fin=False), id="fragmented-ping"),
        pytest.param(frame(b"x" * 126, 0x9), id="ping-over-125"),
        pytest.param(frame(b"more", 0x0), id="continuation-first"),
        pytest.param(frame(b"a", fin=False) + frame(b"b"), id="new-message-mid-fragment"),
        pytest.param(frame(b"\x03", 0x8), id="close-1-byte"),
        pytest.param(close_frame(999), id="close-999"),
        pytest.param(close_frame(1004), id="close-1004"),
        pytest.param(close_frame(1005), id="close-1005-on-the-wire"),
        pytest.param(close_frame(1006), id="close-1006-on-the-wire"),
        pytest.param(close_frame(2999), id="close-2999"),
        pytest.param(close_frame(5000), id="close-5000"),
        pytest.param(b"\x82\xfe\x00\x05" + b"\x00" * 4 + b"short", id="16-bit-length-for-5-bytes"),
    ],
)
def test_protocol_errors_are_1002_and_the_transport_is_dropped(bad: bytes) -> None:
    wire, record = open_server()
    wire.receive_data(bad, 0.0)
    assert_failed(wire, record, 1002)
    wire.receive_data(frame(b"more"), 0.1)  # after the end: ignored
    wire.tick(1e9)
    assert wire.data_to_send() == b""


def test_client_refuses_masked_frames_from_the_server() -> None:
    wire, _server, record = open_client()
    wire.receive_data(frame(b"masked", mask=True), 0.0)
    frames = written(wire, client_reads=False)
    assert frames[-1][0] is Opcode.CLOSE and frames[-1][1][:2] == b"\x03\xea"
    assert wire.should_close_transport and record.closes == [(1002, record.closes[0][1])]


def test_protocol_error_while_closing_keeps_our_code_and_drops() -> None:
    wire, record = open_server()
    wire.close(4000, "bye", 0.0)
    wire.data_to_send()
    wire.receive_data(frame(b"x", mask=False), 0.1)
    assert wire.finished and wire.data_to_send() == b""  # no second close frame
    assert record.closes == [(4000, "bye")]


# -- ping / pong / keepalive -------------------------------------------------------------


def test_ping_is_answered_with_its_payload() -> None:
    wire, _ = open_server()
    wire.receive_data(frame(b"are you there", 0x9), 0.0)
    assert written(wire) == [(Opcode.PONG, b"are you there", True)]
    cwire, server, _ = open_client()
    cwire.receive_data(server.send(Ping(b"p")), 0.0)
    assert to_peer(cwire, server) == [Pong(b"p")]


def test_keepalive_ping_then_pong_reschedules() -> None:
    wire, _ = open_server(ping_interval=5.0, ping_timeout=2.0)
    assert wire.next_deadline == 5.0
    wire.tick(4.9)
    assert wire.data_to_send() == b""
    wire.tick(5.0)
    [(opcode, payload, _)] = written(wire)
    assert opcode is Opcode.PING and len(payload) == 4
    assert wire.next_deadline == 7.0
    wire.receive_data(frame(b"not it", 0xA), 6.0)  # an unsolicited pong changes nothing
    assert wire.next_deadline == 7.0
    wire.receive_data(frame(payload, 0xA), 6.5)
    assert wire.next_deadline == 11.5
    wire.tick(7.0)
    assert wire.is_open


def test_keepalive_timeout_is_1011_and_drops_the_transport() -> None:
    wire, record = open_server(ping_interval=5.0, ping_timeout=2.0)
    wire.tick(5.0)
    wire.data_to_send()
    wire.tick(6.99)
    assert wire.is_open
    wire.tick(7.0)
    frames = written(wire)
    assert frames == [(Opcode.CLOSE, close_payload(1011, KEEPALIVE_TIMEOUT_REASON), True)]
    assert wire.should_close_transport and wire.finished
    assert record.closes == [(1011, KEEPALIVE_TIMEOUT_REASON)]
    assert wire.result.code == 1011 and wire.result.reason == KEEPALIVE_TIMEOUT_REASON


def test_client_keepalive_too() -> None:
    wire, server, _record = open_client(ping_interval=1.0, ping_timeout=1.0)
    wire.tick(1.0)
    [ping] = to_peer(wire, server)
    assert isinstance(ping, Ping)
    wire.receive_data(server.send(ping.response()), 1.5)
    assert wire.next_deadline == 2.5


def test_no_keepalive_when_disabled() -> None:
    wire, _ = open_server(ping_interval=None)
    assert wire.next_deadline is None
    wire.tick(1e6)
    assert wire.data_to_send() == b"" and wire.is_open


def test_ping_timeout_none_pings_but_never_drops() -> None:
    wire, _ = open_server(ping_interval=1.0, ping_timeout=None)
    wire.tick(1.0)
    assert written(wire)[0][0] is Opcode.PING
    assert wire.next_deadline is None
    wire.tick(1e6)
    assert wire.is_open


# -- handler outcomes on the wire ------------------------------------------------------------


def test_handler_raising_is_1011_with_a_generic_reason() -> None:
    flow = Flow("boom")

    @flow.step
    def explode(conn: Connection, message: bytes) -> bool:
        raise ValueError("secret detail")

    wire, _record = open_server(flow)
    wire.receive_data(frame(b"x"), 0.0)
    [(opcode, payload, _)] = written(wire)
    assert opcode is Opcode.CLOSE and payload[:2] == b"\x03\xf3"
    assert b"secret" not in payload


def test_step_timeout_closes_with_4408_at_tick() -> None:
    flow = Flow("slow")
    flow.add(lambda conn, message: True, name="first", timeout=3.0)
    flow.add(lambda conn, message: False, name="second")
    wire, _ = open_server(flow, ping_interval=None)
    assert wire.next_deadline == 3.0
    wire.tick(3.0)
    [(opcode, payload, _)] = written(wire)
    assert opcode is Opcode.CLOSE and payload[:2] == (4408).to_bytes(2, "big")


def test_server_speaks_first_from_on_open() -> None:
    flow = Flow("hello")

    @flow.on_open
    def greet(conn: Connection) -> None:
        conn.send(b"welcome")

    flow.add(lambda conn, message: False, name="idle")
    wire = Wire.server(flow, 0.0)
    client = WSConnection(ConnectionType.CLIENT)
    from wsproto.events import Request

    wire.receive_data(client.send(Request(host="h", target="/")), 0.0)
    client.receive_data(bytes(wire.data_to_send()))
    events = list(client.events())
    assert isinstance(events[1], BytesMessage) and events[1].data == b"welcome"


def test_text_from_a_wsproto_client_with_accept_text() -> None:
    wire, server, record = open_client(accept_text=True)
    wire.receive_data(server.send(TextMessage("ok")), 0.0)
    assert record.messages == ["ok"]
