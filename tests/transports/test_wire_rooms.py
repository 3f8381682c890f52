"""The wire's part in rooms and identity: the peer address in the handshake request,
`conn.request`, the connection's registry, and one prebuilt frame queued on many
wires (`frame_message` + `Wire.send_frame`). No sockets."""

from __future__ import annotations

from socker_core import Connection, Flow, Registry
from socker_transports.wire import (
    SEND_BUFFER_OVERFLOW,
    Accept,
    HandshakeRequest,
    Options,
    Wire,
    frame_message,
)
from tests.transports.wire_peer import close_frame, frame, parse_frames, upgrade_request

ADDRESS = ("127.0.0.1", 40123)


def lobby() -> Flow:
    flow = Flow("lobby")

    @flow.on_open
    def enter(conn: Connection) -> None:
        conn.join("lobby")

    @flow.step
    def play(conn: Connection, message: bytes) -> bool:
        conn.send(b"before")
        conn.server.broadcast(message, room="lobby")
        conn.send(b"after")
        return False

    return flow


def server_wire(registry: Registry, owner: object = None, **options: object) -> Wire:
    wire = Wire.server(
        lobby(),
        0.0,
        Options(**options),  # type: ignore[arg-type]
        remote_address=ADDRESS,
        registry=registry,
        owner=owner,
    )
    wire.receive_data(upgrade_request("/play?room=1", headers=[("X-Player", "ann")]), 0.0)
    assert bytes(wire.data_to_send()).startswith(b"HTTP/1.1 101 ")
    wire.events()
    return wire


def payloads(wire: Wire) -> list[bytes]:
    return [payload for _, payload, _ in parse_frames(bytes(wire.data_to_send()), client=True)]


def test_the_hook_and_the_connection_see_the_address_and_the_request() -> None:
    seen: list[HandshakeRequest] = []

    def hook(request: HandshakeRequest) -> Accept:
        seen.append(request)
        return Accept()

    wire = Wire.server(lobby(), 0.0, handshake_hook=hook, remote_address=ADDRESS)
    wire.receive_data(upgrade_request("/play?room=1", headers=[("X-Player", "ann")]), 0.0)
    [request] = seen
    assert request.remote_address == ADDRESS
    assert wire.stepper is not None
    conn = wire.stepper.conn
    assert conn.request is request
    assert conn.request.header("x-player") == "ann" and conn.request.query == "room=1"
    assert conn.remote_address == ADDRESS
    assert conn.server is None  # no registry given: no rooms
    assert len(conn.id) == 16  # a random, URL-safe token


def test_ids_are_random_tokens_and_the_owner_is_conn_server() -> None:
    registry = Registry()
    owner = object()
    wires = [server_wire(registry, owner) for _ in range(50)]
    ids = {wire.stepper.conn.id for wire in wires if wire.stepper is not None}
    assert len(ids) == 50
    assert all(wire.stepper is not None and wire.stepper.conn.server is owner for wire in wires)
    assert len(registry.room("lobby")) == 50


def test_one_frame_queued_on_many_wires() -> None:
    registry = Registry()
    wires = [server_wire(registry) for _ in range(3)]
    data = b"x" * 64
    prebuilt = frame_message(data)
    assert prebuilt == frame(data, mask=False)
    assert [wire.send_frame(prebuilt, data, 1.0) for wire in wires] == [True] * 3
    assert all(payloads(wire) == [data] for wire in wires)
    big = b"y" * 70_000
    assert frame_message(big) == frame(big, mask=False)


def test_a_closing_wire_is_skipped() -> None:
    registry = Registry()
    wire = server_wire(registry)
    wire.receive_data(close_frame(1000), 1.0)
    wire.data_to_send()
    assert not wire.send_frame(frame_message(b"late"), b"late", 2.0)
    assert wire.data_to_send() == b""
    assert registry.room("lobby") == frozenset()


def test_over_max_send_buffer_drops_that_connection_only() -> None:
    registry = Registry()
    small = server_wire(registry, max_send_buffer=200)  # the 101 answer fits
    other = server_wire(registry)
    data = b"z" * 120
    prebuilt = frame_message(data)
    assert small.send_frame(prebuilt, data, 1.0)
    assert not small.send_frame(prebuilt, data, 1.0)  # over the limit: dropped
    assert small.close_code == SEND_BUFFER_OVERFLOW and small.should_close_transport
    assert other.send_frame(prebuilt, data, 1.0) and other.send_frame(prebuilt, data, 1.0)
    assert other.stepper is not None
    assert registry.room("lobby") == {other.stepper.conn}


def test_a_broadcast_from_a_handler_keeps_the_senders_order() -> None:
    registry = Registry()
    a = server_wire(registry)
    b = server_wire(registry)
    a.receive_data(frame(b"hi"), 1.0)
    # The sender is a recipient too: its copy sits between its own two sends.
    assert payloads(a) == [b"before", b"hi", b"after"]
    b.collect(1.0)  # the embedded delivery: through b's outbox
    assert payloads(b) == [b"hi"]
