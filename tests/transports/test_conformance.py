"""The driver conformance suite: blocking tests, run against every driver in
conftest.DRIVERS on real loopback sockets.

Peers are socker itself (through the harness), the `websockets` library's sync
client, and raw sockets for what no well-behaved library would send.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from socker_core import Connection, Flow
from socker_transports.wire import Accept, HandshakeRequest, Reject
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.flows import (
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    Log,
    make_closer,
    make_game_client,
    make_game_server,
    make_greeter,
    make_sink,
    make_waiter,
)
from tests.transports.harness import DriverHarness

# -- peers -----------------------------------------------------------------------------


def ws_client(url: str, **kwargs: Any) -> ClientConnection:
    """A websockets sync client with bounded waits."""
    kwargs.setdefault("open_timeout", deadline(5))
    kwargs.setdefault("close_timeout", deadline(5))
    client: ClientConnection = ws_connect(url, **kwargs)
    return client


def closed_code(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the connection closes; return the close frame the peer sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=deadline(timeout))
    rcvd = info.value.rcvd
    return (None, "") if rcvd is None else (rcvd.code, rcvd.reason)


class RawPeer:
    """A websocket client on a raw socket: a correct handshake, then any bytes."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=deadline(5))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "server closed during the handshake"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> None:
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, (0x80 if mask else 0) | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
        else:
            header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.sock.sendall(header + payload)

    def _read(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload) from the server, or None at end of stream."""
        head = self._read(2)
        if head is None:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        assert not head[1] & 0x80, "server frames must not be masked"
        if length == 126:
            raw = self._read(2)
            assert raw is not None
            length = struct.unpack("!H", raw)[0]
        elif length == 127:
            raw = self._read(8)
            assert raw is not None
            length = struct.unpack("!Q", raw)[0]
        payload = self._read(length)
        assert payload is not None
        return opcode, payload

    def frames_until_eof(self) -> list[tuple[int, bytes]]:
        frames = []
        while (frame := self.recv_frame()) is not None:
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.sock.close()


def close_code_of(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None
    return None


# -- the game handshake ----------------------------------------------------------------


def test_game_flow_socker_to_socker(driver: DriverHarness, start_server: StartServer) -> None:
    server_log, client_log = Log(), Log()
    server = start_server(make_game_server(server_log))
    result = driver.run_client(server.url, make_game_client(client_log), timeout=deadline(5))
    assert result.ok, result
    assert (result.code, result.reason) == (1000, "flow complete")
    (server_end,) = server_log.wait_for(1, deadline(5))
    assert (server_end.step, server_end.code) == ("control", 1000)
    assert server_end.state == {"player": "p1", "remote": "v=0 o=client"}
    (client_end,) = client_log.wait_for(1, deadline(5))
    assert client_end.step == "control"
    assert client_end.state == {"scene": SCENE.decode(), "offer": OFFER.decode(), "spawned": True}


def test_many_clients_at_once(driver: DriverHarness, start_server: StartServer) -> None:
    server_log = Log()
    server = start_server(make_game_server(server_log))
    results: list[object] = []

    def one(player: str) -> None:
        flow = make_game_client(player=player)
        results.append(driver.run_client(server.url, flow, timeout=deadline(10)))

    threads = [threading.Thread(target=one, args=(f"p{i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline(15))
    assert len(results) == 5
    assert all(getattr(r, "ok", False) for r in results), results
    ends = server_log.wait_for(5, deadline(5))
    assert sorted(e.state["player"] for e in ends) == [f"p{i}" for i in range(5)]


def test_on_open_speaks_first(start_server: StartServer) -> None:
    server = start_server(make_greeter(b"scene data"))
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"scene data"  # nothing sent before


def test_messages_handled_in_order(start_server: StartServer) -> None:
    server = start_server(make_greeter())
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        messages = [b"m%d" % i + b"x" * (i % 7) * 100 for i in range(300)]
        for message in messages:
            ws.send(message)
        assert [ws.recv(timeout=deadline(5)) for _ in messages] == messages


def test_async_step_output_keeps_order(start_server: StartServer) -> None:
    """What an async step sends goes out before what later steps send."""
    flow = Flow("async-order")

    @flow.step
    async def first(conn: Connection, message: bytes) -> bool:
        conn.send(b"A1 " + message)  # sent from inside the awaited coroutine
        conn.send(b"A2 " + message)
        return True

    @flow.step
    def second(conn: Connection, message: bytes) -> bool:
        conn.send(b"B " + message)
        return False

    server = start_server(flow)
    for _ in range(5):
        with ws_client(server.url) as ws:
            ws.send(b"1")
            ws.send(b"2")  # arrives while `first` is pending: it waits in order
            got = [ws.recv(timeout=deadline(5)) for _ in range(3)]
            assert got == [b"A1 1", b"A2 1", b"B 2"]


# -- timeouts and limits ---------------------------------------------------------------


def test_step_timeout_closes_with_4408(driver: DriverHarness, start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_waiter(timeout=0.2, log=log))
    started = time.monotonic()
    with ws_client(server.url) as ws:
        code, reason = closed_code(ws)
    assert code == 4408
    assert "wait" in reason
    assert 0.15 <= time.monotonic() - started < deadline(3)
    assert log.wait_for(1, deadline(5))[0].code == 4408
    # A socker client sees the same close.
    result = driver.run_client(server.url, make_sink(), timeout=deadline(5))
    assert (result.code, result.handshake_status) == (4408, 101)


def test_oversize_message_closes_with_1009(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log), max_size=1024)
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send(b"x" * 1024)  # exactly max_size is fine
        assert ws.recv(timeout=deadline(5)) == b"x" * 1024
        ws.send(b"x" * 1025)
        assert closed_code(ws)[0] == 1009
    assert log.wait_for(1, deadline(5))[0].code == 1009


def test_oversize_fragmented_message_closes_with_1009(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log), max_size=1024)
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send([b"a" * 400, b"b" * 400])  # fragmented, within the limit
        assert ws.recv(timeout=deadline(5)) == b"a" * 400 + b"b" * 400
        # Each fragment fits, the sum does not. The server may refuse after the
        # second fragment, before the client has written the third.
        with contextlib.suppress(ConnectionClosed):
            ws.send([b"a" * 600, b"b" * 600, b"c" * 600])
        assert closed_code(ws)[0] == 1009
    assert log.wait_for(1, deadline(5))[0].code == 1009


def test_text_message_closes_with_1003(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send("text, not binary")
        assert closed_code(ws)[0] == 1003
    assert log.wait_for(1, deadline(5))[0].code == 1003


def test_text_accepted_when_allowed(start_server: StartServer) -> None:
    server = start_server(make_greeter(), accept_text=True)
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send("héllo")
        assert ws.recv(timeout=deadline(5)) == "héllo"  # a str in, a text message back
        ws.send(b"bin")
        assert ws.recv(timeout=deadline(5)) == b"bin"  # binary stays bytes


@pytest.mark.parametrize(
    ("what", "frame"),
    [
        ("reserved bits", {"opcode": 0x2, "payload": b"x", "rsv": 0b100}),
        ("unmasked client frame", {"opcode": 0x2, "payload": b"x", "mask": False}),
        ("unknown opcode", {"opcode": 0x3, "payload": b"x"}),
        ("fragmented ping", {"opcode": 0x9, "payload": b"x", "fin": False}),
    ],
)
def test_protocol_error_closes_with_1002(
    start_server: StartServer, what: str, frame: dict[str, object]
) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    peer = RawPeer(server.port)
    try:
        assert peer.recv_frame() == (0x2, b"welcome")
        peer.send_frame(**frame)  # type: ignore[arg-type]
        frames = peer.frames_until_eof()
    finally:
        peer.close()
    assert close_code_of(frames) == 1002, (what, frames)
    assert log.wait_for(1, deadline(5))[0].code == 1002


# -- keepalive -------------------------------------------------------------------------


def test_keepalive_drops_a_silent_peer(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log), ping_interval=0.2, ping_timeout=0.2)
    peer = RawPeer(server.port)
    started = time.monotonic()
    try:
        frames = peer.frames_until_eof()  # pings arrive; never answered
    finally:
        peer.close()
    elapsed = time.monotonic() - started
    assert any(opcode == 0x9 for opcode, _ in frames), frames
    assert 0.3 <= elapsed < deadline(3), elapsed
    (end,) = log.wait_for(1, deadline(5))
    assert (end.code, end.reason) == (1011, "keepalive ping timeout")


def test_keepalive_keeps_a_live_peer(start_server: StartServer) -> None:
    log = Log()
    timeout = deadline(0.3)
    server = start_server(make_greeter(log=log), ping_interval=0.05, ping_timeout=timeout)
    with ws_client(server.url) as ws:  # websockets answers pings by itself
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        with pytest.raises(TimeoutError):
            ws.recv(timeout=3 * timeout)  # many pings come and go
        ws.send(b"still here")
        assert ws.recv(timeout=deadline(5)) == b"still here"
    assert log.wait_for(1, deadline(5))[0].code == 1000


# -- closing ---------------------------------------------------------------------------


def test_server_initiated_close(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send(b"close")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=deadline(5))
        exc = info.value
        assert exc.rcvd is not None and exc.sent is not None  # a full close handshake
        assert (exc.rcvd.code, exc.rcvd.reason) == (4000, "server says bye")
        assert exc.rcvd_then_sent
    (end,) = log.wait_for(1, deadline(5))
    assert (end.code, end.reason) == (4000, "server says bye")


def test_flow_completion_closes_normally(start_server: StartServer) -> None:
    server = start_server(make_greeter())
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send(b"done")
        assert closed_code(ws) == (1000, "flow complete")


def test_client_initiated_close(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    with ws_client(server.url) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.close(4001, "client leaving")
    (end,) = log.wait_for(1, deadline(5))
    assert (end.code, end.reason) == (4001, "client leaving")


def test_socker_client_initiated_close(driver: DriverHarness, start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    result = driver.run_client(server.url, make_closer(4002, "client done"), timeout=deadline(5))
    assert (result.code, result.reason, result.handshake_status) == (4002, "client done", 101)
    (end,) = log.wait_for(1, deadline(5))
    assert (end.code, end.reason) == (4002, "client done")


def test_peer_vanishing_is_1006(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log))
    peer = RawPeer(server.port)
    assert peer.recv_frame() == (0x2, b"welcome")
    peer.close()  # no close frame
    (end,) = log.wait_for(1, deadline(5))
    assert end.code == 1006


def test_shutdown_closes_live_connections_with_1001(
    driver: DriverHarness, no_thread_leak: None
) -> None:
    log = Log()
    server = driver.start_server(make_greeter(log=log), close_timeout=deadline(2))
    with contextlib.ExitStack() as stack:
        try:
            clients = [stack.enter_context(ws_client(server.url)) for _ in range(3)]
            for ws in clients:
                assert ws.recv(timeout=deadline(5)) == b"welcome"
            assert server.active_connections() == 3
        finally:
            server.stop()
        for ws in clients:
            assert closed_code(ws) == (1001, "server shutting down")
    ends = log.wait_for(3, deadline(1))
    assert [e.code for e in ends] == [1001] * 3


def test_shutdown_aborts_a_peer_that_never_answers(
    driver: DriverHarness, no_thread_leak: None
) -> None:
    log = Log()
    server = driver.start_server(make_greeter(log=log), close_timeout=0.3)
    peer = RawPeer(server.port)
    try:
        assert peer.recv_frame() == (0x2, b"welcome")
        started = time.monotonic()
        server.stop()  # the peer never sends its close frame
        assert time.monotonic() - started < deadline(3)
        assert close_code_of(peer.frames_until_eof()) == 1001
    finally:
        peer.close()
        server.stop()
    assert log.wait_for(1, deadline(1))[0].code == 1001


# -- the opening handshake -------------------------------------------------------------


def test_handshake_hook_rejects_and_accepts(
    driver: DriverHarness, start_server: StartServer
) -> None:
    seen: list[HandshakeRequest] = []

    def hook(request: HandshakeRequest) -> Accept | Reject:
        seen.append(request)
        if request.header("authorization") != "Bearer secret":
            return Reject(401, b"who are you?")
        return Accept(state={"greeting": b"hello alice"})

    server = start_server(make_greeter(), handshake_hook=hook)
    with pytest.raises(InvalidStatus) as info:
        ws_client(server.url + "/room?x=1")
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"who are you?"
    with ws_client(server.url, additional_headers={"Authorization": "Bearer secret"}) as ws:
        assert ws.recv(timeout=deadline(5)) == b"hello alice"
    assert (seen[0].path, seen[0].query) == ("/room", "x=1")
    result = driver.run_client(server.url, make_sink(), timeout=deadline(5))
    assert result.handshake_status == 401
    assert not result.ok


def test_handshake_hook_that_raises_is_500(start_server: StartServer) -> None:
    def hook(request: HandshakeRequest) -> Accept:
        raise RuntimeError("boom")

    server = start_server(make_greeter(), handshake_hook=hook)
    with pytest.raises(InvalidStatus) as info:
        ws_client(server.url)
    assert info.value.response.status_code == 500
    assert b"boom" not in info.value.response.body


def test_routing_by_path(driver: DriverHarness, start_server: StartServer) -> None:
    server = start_server({"/a": make_greeter(b"A"), "/b": make_greeter(b"B")})
    for path, greeting in (("/a", b"A"), ("/b", b"B")):
        with ws_client(server.url + path) as ws:
            assert ws.recv(timeout=deadline(5)) == greeting
    with pytest.raises(InvalidStatus) as info:
        ws_client(server.url + "/c")
    assert info.value.response.status_code == 404
    result = driver.run_client(server.url + "/nowhere", make_sink(), timeout=deadline(5))
    assert result.handshake_status == 404


def test_origins(start_server: StartServer) -> None:
    server = start_server(make_greeter(), origins=["https://good.example"])
    with ws_client(server.url, origin="https://good.example") as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
    for origin in ("https://evil.example", None):
        with pytest.raises(InvalidStatus) as info:
            ws_client(server.url, origin=origin)
        assert info.value.response.status_code == 403


def test_open_timeout_on_a_silent_client(start_server: StartServer) -> None:
    server = start_server(make_greeter(), open_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=deadline(5)) as sock:
        started = time.monotonic()
        response = b""
        while chunk := sock.recv(4096):  # send nothing; the server gives up
            response += chunk
        assert time.monotonic() - started < deadline(3)
    assert response.startswith(b"HTTP/1.1 408")


def test_not_a_websocket_request(start_server: StartServer) -> None:
    server = start_server(make_greeter())
    with socket.create_connection(("127.0.0.1", server.port), timeout=deadline(5)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.split(b" ")[1] in (b"400", b"426"), response


# -- TLS -------------------------------------------------------------------------------


def test_tls_end_to_end(
    driver: DriverHarness,
    start_server: StartServer,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    server_log = Log()
    server = start_server(make_game_server(server_log), ssl=server_ctx)
    assert server.url.startswith("wss://127.0.0.1:")
    result = driver.run_client(server.url, make_game_client(), ssl=client_ctx, timeout=deadline(5))
    assert result.ok, result
    assert server_log.wait_for(1, deadline(5))[0].code == 1000
    # A websockets client over the same TLS.
    with ws_client(server.url, ssl=client_ctx) as ws:
        ws.send(b"hi p2")
        assert ws.recv(timeout=deadline(5)) == SCENE
        ws.send(b"ready")
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(b"answer:x")
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(b"spawn")
        assert ws.recv(timeout=deadline(5)) == SPAWNED
        ws.send(b"bye")
        assert closed_code(ws) == (1000, "flow complete")


def test_tls_client_refuses_an_untrusted_server(
    driver: DriverHarness,
    start_server: StartServer,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls_contexts
    server = start_server(make_greeter(), ssl=server_ctx)
    with pytest.raises(ssl.SSLError):
        driver.run_client(server.url, make_sink(), ssl=ssl.create_default_context(), timeout=5)
