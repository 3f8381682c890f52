"""permessage-deflate (RFC 7692, `compression="deflate"`) on every driver and backend,
server and client side, against `websockets` and raw peers; decompression bombs.

A bomb (a small compressed message that inflates far past `max_size`) is refused
with 1009 after at most `max_size` bytes of output: `Deflate.inflate` never asks
zlib for more, so neither time nor memory grows with what the bomb would inflate to.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from socker_core import Connection, Flow
from socker_transports.wire import Options, Wire
from socker_transports.wire.deflate import Deflate, DeflateParams, client_accepted, server_accept
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    OP_BINARY,
    OP_CLOSE,
    Arena,
    Ledger,
    RawPeer,
    accept_key,
    arena_for,
    new_key,
    open_fds,
    parse_close,
    settle_leaks,
    upgrade_request,
)
from tests.transports.wire_peer import upgrade_request as wire_upgrade_request

KiB = 1024
MiB = 1024 * KiB
OFFER = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")


def echo() -> Flow:
    flow = Flow("echo")

    @flow.step
    def step(conn: Connection, message: bytes | str) -> bool:
        conn.send(message)
        return False

    return flow


def deflated(data: bytes) -> bytes:
    """`data` as one permessage-deflate message payload (no context takeover)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def compressed_frame(payload: bytes, *, masked: bool, opcode: int = OP_BINARY) -> bytes:
    """A final frame with RSV1 set (a compressed message)."""
    first = 0xC0 | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    return header + (b"\0\0\0\0" if masked else b"") + payload


MESSAGES: list[bytes | str] = [
    b"short",
    b"x" * 1000,
    "héllo, wörld " * 200,
    bytes(range(256)) * 300,
    b"",
    b"y" * (300 * KiB),
]


# -- against websockets ----------------------------------------------------------------


def test_a_websockets_client_negotiates_and_round_trips(start_server: StartServer) -> None:
    server = start_server(echo(), compression="deflate", accept_text=True)
    with ws_connect(server.url + "/", compression="deflate", open_timeout=deadline(5)) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert extensions is not None and extensions.startswith("permessage-deflate")
        for message in MESSAGES * 2:  # twice: the contexts carry over between messages
            ws.send(message)
            assert ws.recv(timeout=deadline(5)) == message


def test_no_compression_unless_configured(start_server: StartServer) -> None:
    server = start_server(echo(), accept_text=True)
    with ws_connect(server.url + "/", compression="deflate", open_timeout=deadline(5)) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send(b"x" * 1000)
        assert ws.recv(timeout=deadline(5)) == b"x" * 1000


@pytest.mark.parametrize("no_context_takeover", ["server", "client"])
def test_context_takeover_options_are_granted(
    start_server: StartServer, no_context_takeover: str
) -> None:
    server = start_server(
        echo(), compression="deflate", **{f"{no_context_takeover}_no_context_takeover": True}
    )
    with ws_connect(server.url + "/", compression="deflate", open_timeout=deadline(5)) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert f"{no_context_takeover}_no_context_takeover" in extensions
        for message in MESSAGES:
            if isinstance(message, bytes):
                ws.send(message)
                assert ws.recv(timeout=deadline(5)) == message


def test_a_client_negotiates_with_a_websockets_server(driver: DriverHarness) -> None:
    seen: list[str | None] = []

    def handler(ws: object) -> None:
        conn: object = ws
        seen.append(conn.request.headers.get("Sec-WebSocket-Extensions"))  # type: ignore[attr-defined]
        for message in conn:  # type: ignore[attr-defined]
            conn.send(message)  # type: ignore[attr-defined]

    got: list[bytes] = []
    flow = Flow("client")

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(b"a" * 5000)

    @flow.step
    def first(conn: Connection, message: bytes) -> bool:
        got.append(message)
        conn.send(b"b" * 70000)
        return True

    @flow.step
    def second(conn: Connection, message: bytes) -> bool:
        got.append(message)
        return True

    with ws_serve(handler, "127.0.0.1", 0, compression="deflate") as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        try:
            result = driver.run_client(
                f"ws://127.0.0.1:{port}/", flow, timeout=deadline(10), compression="deflate"
            )
        finally:
            server.shutdown()
            thread.join(deadline(5))
    assert result.code == 1000, result
    assert got == [b"a" * 5000, b"b" * 70000]
    assert seen and seen[0] is not None and seen[0].startswith("permessage-deflate")


# -- decompression bombs ------------------------------------------------------------------

BOMB = deflated(b"\0" * (64 * MiB))  # about 64 KiB that inflates to 64 MiB


@pytest.fixture
def arena(driver: DriverHarness) -> Iterator[Arena]:
    with arena_for(driver) as arena:
        yield arena


def test_a_decompression_bomb_is_refused_with_1009(arena: Arena) -> None:
    arena.start({"/echo": echo()}, compression="deflate", max_size=1 * MiB)
    witness = arena.witness()
    peer = RawPeer.connect(arena.port, handshake=False)
    arena.peers.append(peer)
    key = new_key()
    peer.send(upgrade_request(arena.port, "/echo", key=key, headers=[OFFER]))
    head = peer.read_head()
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head, head
    peer.send(compressed_frame(deflated(b"fine " * 1000), masked=True))
    echoed = zlib.decompressobj(-15).decompress(peer.recv_data() + b"\x00\x00\xff\xff")
    assert echoed == b"fine " * 1000  # the echo is compressed too
    started = time.process_time()
    peer.send(compressed_frame(BOMB, masked=True))
    code, reason = peer.expect_close()
    spent = time.process_time() - started
    assert code == 1009, reason
    assert spent < deadline(0.5), f"{spent:.2f} CPU-s"
    witness.step()
    (end,) = arena.ledger.wait_ends("/echo", 1)
    assert end.code == 1009
    witness.finish()


def test_a_client_refuses_a_decompression_bomb(driver: DriverHarness) -> None:
    threads, fds = set(threading.enumerate()), len(open_fds())
    seen: list[tuple[int | None, bytes]] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(deadline(5))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        sock, _ = listener.accept()
        sock.settimeout(deadline(5))
        peer = RawPeer(sock, client=False)
        try:
            head = peer.read_head()
            assert b"permessage-deflate" in head, head
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            peer.send(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                    "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
                ).encode()
            )
            with contextlib.suppress(OSError):
                peer.send(compressed_frame(BOMB, masked=False))
            while (got := peer.recv_frame()) is not None and got.opcode != OP_CLOSE:
                pass
            assert got is not None
            seen.append(parse_close(got.payload))
            peer.send_close(1009)
        finally:
            peer.close()

    flow = Flow("quiet")

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    ledger = Ledger()
    ledger.watch(flow, "client")
    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        result = driver.run_client(
            f"ws://127.0.0.1:{port}/",
            flow,
            timeout=deadline(10),
            compression="deflate",
            max_size=1 * MiB,
        )
    finally:
        thread.join(deadline(10))
        listener.close()
    assert result.code == 1009, result
    assert seen and seen[0][0] == 1009, seen
    ledger.check()
    settle_leaks(threads, fds, f"{driver.name} client")


# -- sans-I/O ----------------------------------------------------------------------------


def test_inflate_stops_at_the_limit() -> None:
    deflate = Deflate(DeflateParams(False, False, 12, 15))
    assert deflate.inflate(BOMB, True, 1 * MiB) is None  # refused, at most 1 MiB + 1 made
    fresh = Deflate(DeflateParams(False, False, 12, 15))
    assert fresh.inflate(deflated(b"z" * 1000), True, 1000) == b"z" * 1000
    with pytest.raises(ValueError):
        Deflate(DeflateParams(False, False, 12, 15)).inflate(b"\xff\xff\xff", True, None)


def test_a_wire_refuses_a_bomb_after_max_size_bytes_of_output() -> None:
    wire = Wire.server(echo(), 0.0, Options(compression="deflate", max_size=64 * KiB))
    wire.receive_data(wire_upgrade_request("/", headers=[OFFER]), 0.0)
    assert wire.is_open and b"permessage-deflate" in bytes(wire.data_to_send())
    wire.receive_data(compressed_frame(BOMB, masked=True), 0.0)
    out = bytes(wire.data_to_send())
    assert out[0] == 0x88 and out[2:4] == (1009).to_bytes(2, "big"), out[:20]


def test_negotiation() -> None:
    offer = ["permessage-deflate; client_max_window_bits; server_max_window_bits=10"]
    agreed = server_accept(offer, server_no_context_takeover=False, client_no_context_takeover=True)
    assert agreed is not None
    header, params = agreed
    assert "server_max_window_bits=10" in header and "client_no_context_takeover" in header
    assert params.local_window_bits == 10 and params.remote_no_context_takeover
    # Invalid offers are declined, and the next one is taken.
    for bad in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; unknown=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
    ]:
        assert (
            server_accept([bad], server_no_context_takeover=False, client_no_context_takeover=False)
            is None
        )
        assert server_accept(
            [bad, "permessage-deflate"],
            server_no_context_takeover=False,
            client_no_context_takeover=False,
        ) == ("permessage-deflate", DeflateParams(False, False, 12, 15))
    params = client_accepted(
        ["permessage-deflate; server_no_context_takeover; client_max_window_bits=9"],
        client_no_context_takeover=False,
    )
    assert params == DeflateParams(False, True, 9, 15)
    for bad in ["permessage-deflate; foo", "permessage-deflate, permessage-deflate", "other"]:
        with pytest.raises(ValueError):
            client_accepted([bad], client_no_context_takeover=False)
