"""Faults, against every driver and backend (the `driver` fixture) over real sockets:
floods, backpressure, a peer that stops reading, peers that vanish at every step of
the game server's 4-step flow, and a server that vanishes under a socker client.

As in test_bad_input.py, a well-behaved witness walks the 4-step flow on the same
server around each case, and the `arena` teardown checks that every connection
ended by itself, that on_close ran exactly once per opened connection with a
documented code, and that no thread or file descriptor outlived the server.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from socker_core import Close, Connection, ConnectionClosedError, Flow
from socker_transports.wire import KEEPALIVE_TIMEOUT_REASON, SEND_BUFFER_OVERFLOW
from tests.timing import deadline
from tests.transports.flows import CONNECTED, OFFER, SCENE, SPAWNED
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    OP_BINARY,
    OP_PING,
    Arena,
    Ledger,
    RawPeer,
    RawServer,
    arena_for,
    frame,
    mask,
    open_fds,
    send_until_stalled,
    settle_leaks,
    tcp_buffer_limits,
    upgrade_request,
    warm_up,
    watched_game_client,
)

KiB = 1024
ZERO_KEY = b"\0\0\0\0"  # a valid mask that leaves payloads as they are: fast floods
#: The game server's steps, and the game client's, in order.
SERVER_STEPS = ("hello", "handshake", "answer", "control")
CLIENT_STEPS = ("scene", "offer", "connected", "control")
#: Bytes a driver asks for per read: what it may take in before backpressure bites.
READ_SIZE = 256 * KiB


@pytest.fixture
def arena(driver: DriverHarness) -> Iterator[Arena]:
    with arena_for(driver) as arena:
        yield arena


# -- floods ----------------------------------------------------------------------------------


def test_ping_flood_is_answered_in_order_with_bounded_buffers(arena: Arena) -> None:
    arena.start()
    witness = arena.witness()
    peer = arena.peer(rcvbuf=4 * KiB)  # reads nothing: the pongs back up at once
    peer.game_steps(1)
    header = frame(b"", OP_PING, key=ZERO_KEY, length=125)
    size, pad = len(header) + 125, b"." * 117
    # More than the kernel may hold: the server's receive and send buffers (pongs)
    # and our send buffer, plus what the server may hold itself.
    rmem, wmem = tcp_buffer_limits()
    count = (rmem + 2 * wmem + 2 * READ_SIZE) // size + 1000
    pings = b"".join(header + struct.pack("!Q", i) + pad for i in range(count))

    # Never reading the pongs: the server must stop reading rather than buffer them.
    sent = send_until_stalled(peer.sock, pings)
    assert sent < len(pings), "the server kept reading a peer that reads nothing"
    for wire in arena.wires():
        assert wire.buffered_amount <= wire.options.write_limit + READ_SIZE, wire.buffered_amount
    witness.step()  # the server stays healthy meanwhile

    # Read back: every ping gets its pong, in order (reading lets the server go on).
    def pongs(start: int, stop: int) -> bytes:
        return b"".join(b"\x8a\x7d" + struct.pack("!Q", i) + pad for i in range(start, stop))

    complete = sent // size
    assert peer.recv_exactly(complete * 127) == pongs(0, complete)
    if sent % size:
        peer.send(pings[sent : (complete + 1) * size])  # the rest of a partly sent ping
        assert peer.recv_exactly(127) == pongs(complete, complete + 1)
    peer.send_message(b"ready")  # and the flow goes on
    assert peer.recv_data() == OFFER
    peer.send_close(1000)
    assert peer.expect_close() == (1000, b"")
    witness.finish()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("answer", 1000)


def make_busy(gate: threading.Event) -> Flow:
    """An async first step that stays busy until `gate` is set (bounded); then a
    step that checks the order of numbered messages and answers "end" with
    "<count> <out of order>"."""
    flow = Flow("busy")

    @flow.step
    async def busy(conn: Connection, message: bytes) -> bool:
        end = time.monotonic() + deadline(10)
        while not gate.is_set():
            if time.monotonic() > end:
                raise TimeoutError("the test never released the busy handler")
            await anyio.sleep(0.005)  # polling a threading.Event from any event loop
        conn.state.count = conn.state.disorder = 0
        return True

    @flow.step
    def count(conn: Connection, message: bytes) -> bool:
        if message == b"end":
            conn.send(b"%d %d" % (conn.state.count, conn.state.disorder))
            return True
        if struct.unpack("!Q", message[:8])[0] != conn.state.count:
            conn.state.disorder += 1
        conn.state.count += 1
        return False

    return flow


def test_message_flood_while_a_handler_is_busy_is_backpressured(
    driver: DriverHarness, arena: Arena
) -> None:
    gate = threading.Event()
    max_queue = 4
    arena.start({"/busy": make_busy(gate)}, max_queue=max_queue)
    witness = arena.witness()
    peer = arena.peer("/busy")
    peer.send_message(b"go")  # the busy handler starts
    header = frame(b"", OP_BINARY, key=ZERO_KEY, length=KiB)
    size = len(header) + KiB
    # More than the kernel may hold (the server's receive buffer and our send
    # buffer) plus what the server may hold itself: never all sent while busy.
    rmem, wmem = tcp_buffer_limits()
    count = (rmem + wmem + 2 * READ_SIZE) // size + 1000
    pad = b"." * (KiB - 8)
    flood = b"".join(header + struct.pack("!Q", i) + pad for i in range(count))

    try:
        sent = send_until_stalled(peer.sock, flood)
        assert sent < len(flood), "the server kept reading while its handler was busy"
        (wire,) = [w for w in arena.wires() if w.path == "/busy"]
        assert not wire.wants_data  # the driver stopped reading...
        assert wire.stepper is not None and wire.stepper.queued == max_queue
        held = wire._held_size  # ...holding at most one read beyond the queue
        assert 0 < held <= READ_SIZE + size, f"{held} bytes held for the busy handler"
        witness.step()  # other connections are served meanwhile
    finally:
        gate.set()  # the handler returns: everything sent is delivered, in order
    delivered = -(-sent // size)
    peer.send(flood[sent : delivered * size])  # the rest of a partly sent message
    peer.send_message(b"end")
    assert peer.recv_data() == b"%d 0" % delivered
    assert peer.expect_close() == (1000, b"flow complete")
    witness.finish()
    (end,) = arena.ledger.wait_ends("/busy", 1)
    assert (end.step, end.code) == ("count", 1000)


def make_talker(chunk: int, limit: int) -> Flow:
    """Sends `chunk`-byte messages from an async step until closed (at most `limit`)."""
    flow = Flow("talker")

    @flow.step
    async def pump(conn: Connection, message: bytes) -> bool | Close:
        data = b"t" * chunk
        end = time.monotonic() + deadline(10)
        for _ in range(limit):
            if time.monotonic() > end:
                break
            try:
                conn.send(data)
            except ConnectionClosedError:
                return False
            await anyio.sleep(0.001)
        return Close(4000, "the peer read everything?")

    return flow


def test_peer_that_stops_reading_is_dropped_with_4503(arena: Arena) -> None:
    max_send_buffer = 256 * KiB
    chunk, limit = 16 * KiB, 4096  # 64 MiB at most: far beyond any buffer
    arena.start({"/talker": make_talker(chunk, limit)}, max_send_buffer=max_send_buffer)
    witness = arena.witness()
    peer = arena.peer("/talker", rcvbuf=4 * KiB)
    peer.send_message(b"go")  # then never read
    (end,) = arena.ledger.wait_ends("/talker", 1, deadline(10))
    assert (end.step, end.code) == ("pump", SEND_BUFFER_OVERFLOW)
    witness.step()
    # The connection was dropped: what was already in flight, then the end of the stream.
    received = 0
    while (got := peer.recv_frame()) is not None:
        assert got.opcode == OP_BINARY, got
        received += len(got.payload)
    assert received < limit * chunk
    witness.finish()


# -- peers that vanish ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rst", "half-close", "silence"])
def test_peer_vanishing_at_every_step(driver: DriverHarness, arena: Arena, how: str) -> None:
    if how == "silence":  # a peer that stops answering: keepalive ends it
        arena.start(ping_interval=0.1, ping_timeout=0.3)
    else:
        arena.start()
    witness = arena.witness()
    peers = [arena.peer() for _ in SERVER_STEPS]
    for k, peer in enumerate(peers):
        peer.game_steps(k, name=f"p{k}")  # peer k stops at step k
    for peer in peers:
        if how == "rst":
            peer.reset()
        elif how == "half-close":
            peer.shutdown_write()
    witness.step()
    ends = arena.ledger.wait_ends("/game", len(peers), deadline(5))
    assert sorted(end.step for end in ends) == sorted(SERVER_STEPS)
    if how == "silence":
        assert {(end.code, end.reason) for end in ends} == {(1011, KEEPALIVE_TIMEOUT_REASON)}
        for peer in peers:  # the server said why, then hung up
            assert peer.expect_close(reply="fin")[0] == 1011
    else:
        assert {end.code for end in ends} == {1006}
    if how == "half-close":
        for peer in peers:  # the server hung up, no close frame
            assert all(f.opcode == OP_PING for f in peer.read_until_eof())
    witness.finish()


@pytest.mark.parametrize("how", ["rst", "half-close"])
def test_peer_vanishing_during_the_opening_handshake(arena: Arena, how: str) -> None:
    arena.start()  # open_timeout stays 10 s: the server must notice at once
    witness = arena.witness()
    request = upgrade_request(arena.port, "/game")
    peer = arena.peer(handshake=False)
    peer.send(request[: len(request) // 2])
    arena.wait_active(2)
    if how == "rst":
        peer.reset()
    else:
        peer.shutdown_write()
    arena.wait_active(1)  # only the witness is left
    if how == "half-close":
        assert peer.read_until_eof() == []
    witness.finish()
    assert arena.ledger.opened_labels() == ["/witness"]


# -- client side: the server vanishes --------------------------------------------------------


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_server_vanishing_at_every_step(driver: DriverHarness, how: str) -> None:
    warm_up(driver)
    answers = (SCENE, OFFER, CONNECTED, SPAWNED)

    def server(peer: RawPeer, k: int) -> None:
        """Serve the game until the client is at step k, then vanish."""
        for i in range(k + 1):
            peer.recv_data()  # the client's i-th message: hi, ready, answer, spawn
            if i < k:
                peer.send_message(answers[i])
        if how == "rst":
            peer.reset()
        else:
            peer.close()  # a FIN: everything the client sent was read

    threads, fds = set(threading.enumerate()), len(open_fds())
    with RawServer(server, count=len(CLIENT_STEPS)) as raw:
        for step in CLIENT_STEPS:
            ledger = Ledger()
            started = time.monotonic()
            result = driver.run_client(raw.url, watched_game_client(ledger), timeout=deadline(5))
            assert time.monotonic() - started < deadline(3)
            assert (result.code, result.handshake_status) == (1006, 101), (step, result)
            (end,) = ledger.wait_ends("client", 1)
            assert end.code == 1006
            if step == "connected":
                # The answer leaves from inside the async "offer" step: the server
                # may vanish before the client has taken that step's result.
                assert end.step in ("offer", "connected")
            else:
                assert end.step == step
            ledger.check()
    settle_leaks(threads, fds, f"{driver.name} client")


def test_raw_peer_frames_are_what_they_claim() -> None:
    """The hand-built frames both suites rely on."""
    assert frame(b"ab", OP_BINARY, masked=False) == b"\x82\x02ab"
    assert frame(b"", OP_PING, rsv=0b101, fin=False, key=ZERO_KEY) == b"\x59\x80" + ZERO_KEY
    assert frame(b"", length=70_000, masked=False) == b"\x82\x7f" + struct.pack("!Q", 70_000)
    assert frame(b"x" * 200, masked=False)[:4] == b"\x82\x7e\x00\xc8"
    masked = frame(b"hello", key=b"\x01\x02\x03\x04")
    assert masked[:6] == b"\x82\x85\x01\x02\x03\x04"
    assert mask(b"\x01\x02\x03\x04", masked[6:]) == b"hello"
