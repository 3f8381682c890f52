"""After failing a connection (1002 a broken frame, 1007 bad UTF-8, 1009 too big),
socker keeps reading and discarding, bounded by `close_timeout`, so a conforming
peer's close reply lands in its read buffer instead of on a closed socket (which
answers it with a TCP reset): the peer sees our close frame, answers it, and the
stream then ends in an orderly EOF. A peer that never answers is dropped after
`close_timeout`. Every driver and backend, server and client side, over real
sockets; `linger_timeout=None` throughout, so what is tested is this decision
(`Wire.linger` after a protocol failure, the close handshake for a refused
message), not the lingering close of an HTTP error."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from socker_core import Connection, Flow
from socker_transports.wire.options import MiB
from tests.timing import deadline
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    Arena,
    Ledger,
    RawPeer,
    RawServer,
    arena_for,
    frame,
    open_fds,
    parse_close,
    settle_leaks,
)
from tests.transports.wire_peer import open_server

KiB = 1024
MAX_SIZE = 4 * KiB


@pytest.fixture
def arena(driver: DriverHarness) -> Iterator[Arena]:
    with arena_for(driver) as arena:
        yield arena


#: What the peer sends to be failed (masked: it is a client), and the code it earns.
BAD_INPUT: dict[str, tuple[bytes, int]] = {
    "unmasked frame (1002)": (frame(b"x", masked=False), 1002),
    "reserved opcode (1002)": (frame(b"x", 0x3), 1002),
    "invalid UTF-8 text (1007)": (frame(b"\xff\xfe", OP_TEXT), 1007),
    "message too big (1009)": (frame(b"x" * (MAX_SIZE + 1)), 1009),
}


def read_until_close(peer: RawPeer) -> int | None:
    """The code of the next close frame (None if the stream ended without one)."""
    while (got := peer.recv_frame()) is not None:
        if got.opcode == OP_CLOSE:
            return parse_close(got.payload)[0]
    return None


def orderly_end(sock: socket.socket) -> bool:
    """Read to the end of the stream: True for an orderly EOF, False for a reset
    (ECONNRESET, or EPIPE once our FIN had arrived)."""
    while True:
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return False


def start(arena: Arena) -> None:
    arena.start(
        accept_text=True,
        max_size=MAX_SIZE,
        linger_timeout=None,
        close_timeout=deadline(5),
    )


@pytest.mark.parametrize(("bad", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_a_close_reply_after_a_failure_meets_an_orderly_end(
    arena: Arena, bad: bytes, code: int
) -> None:
    start(arena)
    for _ in range(2):
        peer = arena.peer()
        peer.game_steps(1)
        peer.send(bad)
        assert read_until_close(peer) == code
        peer.send_close(code)  # a conforming peer answers the close frame
        assert orderly_end(peer.sock), "the close reply was met with a reset"
        peer.close()
    ends = arena.ledger.wait_ends("/game", 2)
    assert [end.code for end in ends] == [code, code]


@pytest.mark.parametrize(("bad", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_a_peer_that_never_answers_is_dropped_after_close_timeout(
    arena: Arena, bad: bytes, code: int
) -> None:
    close_timeout = deadline(1)
    arena.start(
        accept_text=True, max_size=MAX_SIZE, linger_timeout=None, close_timeout=close_timeout
    )
    peer = arena.peer()
    peer.game_steps(1)
    peer.send(bad)
    assert read_until_close(peer) == code
    started = time.monotonic()
    arena.wait_active(1)  # still served (reading, discarding) ...
    end = started + close_timeout + deadline(5)
    while arena.server is not None and arena.server.active_connections():
        assert time.monotonic() < end, "never dropped"
        time.sleep(0.01)  # a bounded poll of the server's count
    waited = time.monotonic() - started
    assert waited >= close_timeout * 0.5, f"dropped after {waited:.2f}s, not close_timeout"
    assert orderly_end(peer.sock)  # everything it sent was read: no reset either
    assert [end.code for end in arena.ledger.wait_ends("/game", 1)] == [code]


# -- the client side --------------------------------------------------------------------

#: What a server sends to fail the client (unmasked: it is a server).
BAD_FROM_SERVER: dict[str, tuple[bytes, int]] = {
    "masked frame (1002)": (frame(b"x", masked=True), 1002),
    "invalid UTF-8 text (1007)": (frame(b"\xff\xfe", OP_TEXT, masked=False), 1007),
    "message too big (1009)": (frame(b"x" * (MAX_SIZE + 1), OP_BINARY, masked=False), 1009),
}


def quiet_client() -> Flow:
    flow = Flow("quiet-client")

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    return flow


@pytest.mark.parametrize(("bad", "code"), BAD_FROM_SERVER.values(), ids=BAD_FROM_SERVER.keys())
def test_a_client_fails_then_reads_the_close_reply(
    driver: DriverHarness, no_thread_leak: None, bad: bytes, code: int
) -> None:
    threads, fds = set(threading.enumerate()), len(open_fds())
    seen: list[int | None] = []
    orderly: list[bool] = []

    def server(peer: RawPeer, index: int) -> None:
        peer.send(bad)
        seen.append(read_until_close(peer))
        peer.send_close(code)  # the answer; then the server closes first (RFC 6455 7.1.1)
        peer.shutdown_write()
        orderly.append(orderly_end(peer.sock))

    ledger = Ledger()
    flow = ledger.watch(quiet_client(), "client")
    with RawServer(server, count=1) as raw:
        result = driver.run_client(
            raw.url,
            flow,
            timeout=deadline(10),
            accept_text=True,
            max_size=MAX_SIZE,
            linger_timeout=None,
            close_timeout=deadline(5),
        )
    assert result.code == code, result
    assert seen == [code]
    assert orderly == [True], "the client reset the connection"
    ledger.check()
    settle_leaks(threads, fds, f"{driver.name} client")


# -- the decision, sans-I/O ---------------------------------------------------------------


def test_the_wire_lingers_for_close_timeout_after_a_protocol_failure() -> None:
    wire, record = open_server(linger_timeout=None, close_timeout=3.0)
    wire.receive_data(frame(b"x", masked=False), 1.0)
    assert wire.should_close_transport
    assert wire.linger == (3.0, 1 * MiB)  # whatever linger_timeout says
    assert record.closes == [(1002, "server received unexpected unmasked frame")]

    wire, _ = open_server(linger_timeout=2.0, close_timeout=None)
    wire.receive_data(frame(b"x", masked=False), 1.0)
    assert wire.linger == (2.0, 1 * MiB)  # no close_timeout: linger_timeout bounds it

    wire, _ = open_server(linger_timeout=None, close_timeout=None)
    wire.receive_data(frame(b"x", masked=False), 1.0)
    assert wire.linger is None  # neither: closed at once

    # A keepalive timeout is not the peer breaking the protocol: the usual linger.
    wire, _ = open_server(linger_timeout=None, close_timeout=3.0, ping_interval=1.0)
    wire.tick(1.0)  # the ping
    wire.tick(30.0)  # no pong
    assert wire.should_close_transport and wire.close_code == 1011
    assert wire.linger is None
