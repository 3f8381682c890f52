"""The heartbeat a browser can see: on a connection that negotiated
socker.resume.v1 the server announces its ping_interval as "heartbeat" in its
"session" and "resumed" messages and sends an ack with every keepalive ping, its
count repeated when nothing new came. Every receiver accepts the repeated count;
connections without resume are unchanged.

Sans-I/O first (the decision is the wire's, one place), then every driver over
real loopback sockets: a raw peer reads what a server sends, a scripted raw
server sends repeated acks to a real client."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from socker_core import Connection, Flow, MemorySessionStore, ResumeSession
from socker_transports.wire import Options, Wire
from socker_transports.wire.frames import OP_PING, OP_PONG, OP_TEXT
from socker_transports.wire.resume import RESUME_SUBPROTOCOL, control, parse_control
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    OP_BINARY,
    OP_CLOSE,
    Frame,
    RawPeer,
    accept_key,
    upgrade_request,
)
from tests.transports.test_wire_resume import HOST, Link

INTERVAL = 1.0
OPTIONS = Options(ping_interval=INTERVAL, ping_timeout=INTERVAL)


def _flows(window: float | None = 30.0) -> tuple[Flow, Flow]:
    server = Flow("s", resume_window=window)

    @server.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return message == b"bye"

    client = Flow("c")
    client.add(lambda conn, message: False, name="sink")
    return server, client


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked (server) frame in `data`."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80 == 0 and length < 126  # small, unmasked
        frames.append((opcode, data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return frames


def _controls(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(payload) for opcode, payload in _frames(data) if opcode == OP_TEXT]


def _open(
    options: Options = OPTIONS, *, window: float | None = 30.0, reconnect: bool = True
) -> tuple[Wire, Wire, Link, MemorySessionStore, bytes]:
    """A client and a server wire, open; also what the server sent after its 101."""
    server_flow, client_flow = _flows(window)
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0, options, reconnect=reconnect)
    server = Wire.server(server_flow, 0.0, options, sessions=store)
    server.receive_data(bytes(client.data_to_send()), 0.0)
    out = bytes(server.data_to_send())
    client.receive_data(out, 0.0)
    link = Link(client, server)
    link.pump(0.0)
    assert client.is_open and server.is_open
    return client, server, link, store, out.split(b"\r\n\r\n", 1)[1]


def _ping_round(client: Wire, server: Wire, link: Link, now: float) -> bytes:
    """The server's keepalive tick at `now`; what it wrote reaches the client, the
    client's pong the server. Returns what the server wrote."""
    server.tick(now)
    out = bytes(server.data_to_send())
    client.receive_data(out, now)
    link.pump(now)
    return out


# -- sans-I/O ---------------------------------------------------------------------


def test_the_session_message_announces_the_ping_interval_as_heartbeat() -> None:
    *_, first = _open(Options(ping_interval=7.5))
    (session,) = _controls(first)
    assert session["type"] == "session" and session["heartbeat"] == 7.5
    assert session["window"] == 30.0


def test_no_heartbeat_key_when_the_server_does_not_ping() -> None:
    *_, first = _open(Options(ping_interval=None))
    (session,) = _controls(first)
    assert session["type"] == "session" and "heartbeat" not in session


def _resumed_message(resuming_server: Options) -> dict[str, Any]:
    """The "resumed" message of a server with `resuming_server` options."""
    client, server, _link, store, _ = _open()
    client.abort(0.0)
    server.abort(0.0)
    assert client.detached and server.detached
    assert client.stepper is not None and server.stepper is not None
    retry = Wire.client(client.stepper.flow, HOST, 1.0, OPTIONS, resume_from=client)
    fresh = Wire.server(server.stepper.flow, 1.0, resuming_server, sessions=store)
    fresh.receive_data(bytes(retry.data_to_send()), 1.0)
    out = bytes(fresh.data_to_send()).split(b"\r\n\r\n", 1)[1]
    resumed = _controls(out)[0]
    assert resumed["type"] == "resumed"
    return resumed


def test_the_resumed_message_announces_the_heartbeat_too() -> None:
    assert _resumed_message(Options(ping_interval=3.0))["heartbeat"] == 3.0  # this server's
    assert "heartbeat" not in _resumed_message(Options(ping_interval=None))


def test_a_quiet_resumable_connection_gets_an_ack_every_ping_tick() -> None:
    client, server, link, _store, _ = _open()
    now = 0.0
    for _ in range(5):
        now += INTERVAL
        frames = _frames(_ping_round(client, server, link, now))
        # The ack first, then the ping: nothing new came, the count repeats (0).
        assert [opcode for opcode, _ in frames] == [OP_TEXT, OP_PING]
        assert json.loads(frames[0][1]) == {"type": "ack", "received": 0}
    assert client.is_open and server.is_open
    # After a message the count moves on, then repeats again.
    client.send(b"hello", now)
    link.pump(now)
    counts = []
    for _ in range(3):
        now += INTERVAL
        counts += [m["received"] for m in _controls(_ping_round(client, server, link, now))]
    assert counts == [1, 1, 1]
    assert client.is_open and server.is_open


def test_the_python_client_accepts_repeated_acks_and_only_acks_what_is_new() -> None:
    client, server, link, _store, _ = _open()
    server.send(b"one", 0.0)  # the client receives one message: one unacked
    link.pump(0.0)
    assert client.stepper is not None and client.stepper.replay is not None
    client.send(b"x", 0.0)
    link.pump(0.0)
    replay = client.stepper.replay
    for round_ in range(4):
        client.receive_data(_text(control("ack", received=1)), float(round_))  # repeated
        assert client.is_open, client.result
    assert replay.acked == 1 and len(replay) == 0
    # The client's own tick acks only when something is unacked: once, then never.
    sent = []
    for now in (1.0, 2.5, 4.0):
        client.tick(now)
        data = bytes(client.data_to_send())
        sent.append(data)
        server.receive_data(data, now)
        link.pump(now)
    texts = [payload for payload in sent if payload and payload[0] & 0x0F == OP_TEXT]
    assert len(texts) == 1  # the ack of "one"; later pings come alone


def _text(payload: str) -> bytes:
    data = payload.encode()
    assert len(data) < 126
    return bytes([0x80 | OP_TEXT, len(data)]) + data


def test_a_count_going_backwards_is_still_refused() -> None:
    client, _server, link, _store, _ = _open()
    client.send(b"a", 0.0)
    client.send(b"b", 0.0)
    link.pump(0.0)
    client.receive_data(_text(control("ack", received=2)), 0.0)
    client.receive_data(_text(control("ack", received=2)), 0.0)  # repeated: fine
    assert client.is_open
    client.receive_data(_text(control("ack", received=1)), 0.0)  # backwards: 1002
    assert client.close_code == 1002


def test_no_heartbeat_acks_without_resume() -> None:
    # A plain client on a resumable route, and a resumable client on a plain route.
    for reconnect, window in ((False, 30.0), (True, None)):
        client, server, link, _store, first = _open(reconnect=reconnect, window=window)
        assert server.subprotocol is None and _controls(first) == []
        now = 0.0
        for _ in range(3):
            now += INTERVAL
            assert [op for op, _ in _frames(_ping_round(client, server, link, now))] == [OP_PING]
        assert client.is_open and server.is_open


def test_a_client_wire_announces_no_heartbeat_and_sends_no_idle_ack() -> None:
    client, server, link, _store, _ = _open()
    now = 0.0
    for _ in range(3):
        now += INTERVAL
        client.tick(now)
        data = bytes(client.data_to_send())
        assert data and data[0] & 0x0F == OP_PING  # the client's ping alone
        server.receive_data(data, now)
        link.pump(now)


@pytest.mark.parametrize(
    "beat", [0, -1, "1", True, None, [1]], ids=["zero", "negative", "str", "bool", "null", "list"]
)
def test_a_malformed_heartbeat_is_a_malformed_control_message(beat: object) -> None:
    token = "A" * 22
    for kind, fields in (("session", {"window": 30}), ("resumed", {"received": 0})):
        message = {"type": kind, "token": token, **fields, "heartbeat": beat}
        parsed = parse_control(json.dumps(message))
        if beat is None:
            assert parsed is not None  # null: no heartbeat, like an absent key
        else:
            assert parsed is None
        del message["heartbeat"]
        assert parse_control(json.dumps(message)) is not None
        message["heartbeat"] = 0.25
        assert parse_control(json.dumps(message)) is not None


class _Keeper:
    """A SessionKeeper that stores nothing (the wire's side of kept sessions)."""

    def opened(self, wire: Wire, session: ResumeSession, now: float) -> None: ...
    def touched(self, wire: Wire) -> None: ...
    def detached(self, wire: Wire, session: ResumeSession, now: float) -> None: ...
    def lookup(self, *args: Any) -> None: ...
    def ended(self, wire: Wire, session: ResumeSession, code: int) -> None: ...
    def confirmed(self, wire: Wire, session: ResumeSession) -> None: ...


def test_kept_sessions_repeat_the_stored_snapshots_count() -> None:
    """With a keeper (cross-worker resume) an ack states the stored snapshot's
    received count (`ack_count`): the heartbeat repeats it until a snapshot that
    covers more is stored, and the client accepts every repetition."""
    server_flow, client_flow = _flows()
    client = Wire.client(client_flow, HOST, 0.0, OPTIONS, reconnect=True)
    server = Wire.server(server_flow, 0.0, OPTIONS, sessions=MemorySessionStore(), keeper=_Keeper())
    link = Link(client, server)
    link.pump(0.0)
    assert server.stepper is not None and server.stepper.replay is not None
    server.persisted(server.stepper.snapshot(0.0), 0.0)  # the first snapshot, stored
    link.pump(0.0)
    for data in (b"a", b"b", b"c"):
        client.send(data, 0.0)
    link.pump(0.0)
    assert server.stepper.replay.received == 3
    now, counts = 0.0, []
    for _ in range(3):
        now += INTERVAL
        counts += [m["received"] for m in _controls(_ping_round(client, server, link, now))]
    assert counts == [0, 0, 0]  # nothing stored covers the three yet
    snapshot = server.stepper.snapshot(now)
    server.persisted(snapshot, now)  # stored: acks may now say 3
    link.pump(now)
    for _ in range(3):
        now += INTERVAL
        counts += [m["received"] for m in _controls(_ping_round(client, server, link, now))]
    assert counts[3:] == [3, 3, 3]
    assert client.is_open and server.is_open


# -- every driver, real sockets ---------------------------------------------------------

REAL_INTERVAL = 0.05


def _resumable_peer(port: int, path: str, *, offer: bool, selected: bool) -> RawPeer:
    """A raw client, offering socker.resume.v1 or not; `selected`: whether the
    server must select it."""
    peer = RawPeer.connect(port, path, handshake=False, timeout=deadline(5))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    headers = [("Sec-WebSocket-Protocol", RESUME_SUBPROTOCOL)] if offer else []
    peer.send(upgrade_request(port, path, key=key, headers=headers))
    head = peer.read_head()
    assert head.startswith(b"HTTP/1.1 101"), head
    assert accept_key(key).encode() in head
    assert (RESUME_SUBPROTOCOL.encode() in head) == selected
    return peer


def _read(peer: RawPeer, pings: int) -> list[Frame]:
    """Frames until `pings` pings came (each answered with a pong)."""
    frames: list[Frame] = []
    while sum(1 for f in frames if f.opcode == OP_PING) < pings:
        got = peer.recv_frame()
        assert got is not None, frames
        frames.append(got)
        if got.opcode == OP_PING:
            peer.send_frame(got.payload, OP_PONG)
    return frames


def _beats(frames: list[Frame]) -> list[int | None]:
    """For each ping, the count of the ack right before it (None: no ack there)."""
    out: list[int | None] = []
    for index, got in enumerate(frames):
        if got.opcode == OP_PING:
            before = frames[index - 1] if index else None
            if before is not None and before.opcode == OP_TEXT:
                message = json.loads(before.payload)
                assert message["type"] == "ack"
                out.append(message["received"])
            else:
                out.append(None)
    return out


def _bye(peer: RawPeer) -> None:
    peer.send_message(b"bye")
    while (got := peer.recv_frame()) is not None and got.opcode != OP_CLOSE:
        if got.opcode == OP_PING:
            peer.send_frame(got.payload, OP_PONG)
    assert got is not None
    peer.send_close(1000)
    peer.close()


def test_every_server_driver_acks_every_ping_on_a_quiet_resumable_connection(
    driver: DriverHarness, start_server: StartServer
) -> None:
    server_flow, _ = _flows(deadline(10.0))
    plain_flow, _ = _flows(None)
    server = start_server(
        {"/": server_flow, "/plain": plain_flow},
        ping_interval=REAL_INTERVAL,
        ping_timeout=deadline(5.0),
    )
    peer = _resumable_peer(server.port, "/", offer=True, selected=True)
    first = peer.recv_frame()
    assert first is not None and first.opcode == OP_TEXT
    session = json.loads(first.payload)
    assert session["type"] == "session" and session["heartbeat"] == REAL_INTERVAL
    assert _beats(_read(peer, 4)) == [0, 0, 0, 0]  # an ack with every ping, repeated
    peer.send_message(b"x")  # echoed; the count moves to 1 and repeats
    frames = _read(peer, 4)
    assert [f.payload for f in frames if f.opcode == OP_BINARY] == [b"x"]
    assert _beats(frames)[-3:] == [1, 1, 1]
    _bye(peer)
    # Without resume nothing changes: pings alone, no text frame.
    for path, offer in (("/", False), ("/plain", True)):
        plain = _resumable_peer(server.port, path, offer=offer, selected=False)
        frames = _read(plain, 3)
        assert [f.opcode for f in frames] == [OP_PING] * 3, (path, offer)
        _bye(plain)


def _serve_script(script: Any) -> tuple[int, threading.Thread, list[BaseException]]:
    """A one-connection raw server that selects socker.resume.v1 and runs `script`."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(deadline(5))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sock, _ = listener.accept()
            sock.settimeout(deadline(5))
            peer = RawPeer(sock, client=False)
            try:
                head = peer.read_head()
                key = next(
                    line.split(b":", 1)[1].strip().decode()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                assert RESUME_SUBPROTOCOL.encode() in head
                peer.send(
                    (
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                        f"Sec-WebSocket-Protocol: {RESUME_SUBPROTOCOL}\r\n\r\n"
                    ).encode()
                )
                script(peer)
            finally:
                peer.close()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            listener.close()

    thread = threading.Thread(target=run, name="heartbeat-server")
    thread.start()
    return listener.getsockname()[1], thread, errors


def test_every_client_driver_accepts_repeated_acks(driver: DriverHarness) -> None:
    seen: list[object] = []

    def script(peer: RawPeer) -> None:
        ack = lambda n: peer.send_frame(control("ack", received=n).encode(), OP_TEXT)  # noqa: E731
        token = "B" * 22
        session = control("session", token=token, window=deadline(10.0), heartbeat=0.05)
        peer.send_frame(session.encode(), OP_TEXT)
        for _ in range(5):
            ack(0)  # nothing came from the client yet: 0, again and again
        peer.send_message(b"go")
        while (got := peer.recv_frame()) is not None and got.opcode != OP_BINARY:
            seen.append(got.opcode)
        assert got is not None and got.payload == b"ok"
        for _ in range(5):
            ack(1)
        peer.send_message(b"bye")
        code = None
        while (got := peer.recv_frame()) is not None:
            if got.opcode == OP_CLOSE:
                code = int.from_bytes(got.payload[:2], "big")
                peer.send_frame(got.payload[:2], OP_CLOSE)
                break
        seen.append(code)

    port, thread, errors = _serve_script(script)
    flow = Flow("c")

    @flow.step
    def go(conn: Connection, message: bytes) -> bool:
        conn.send(b"ok")
        return True

    flow.add(lambda conn, message: message == b"bye", name="bye")  # past the last: 1000
    try:
        result = driver.run_client(
            f"ws://127.0.0.1:{port}/", flow, timeout=deadline(10.0), reconnect=True
        )
    finally:
        thread.join(deadline(10.0))
    assert not thread.is_alive()
    assert errors == [], errors
    assert result.code == 1000, result  # not 1002: every repeated ack was accepted
    assert seen[-1] == 1000
