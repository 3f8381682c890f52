"""Bad input, against every driver and backend (the `driver` fixture) over real sockets.

Each case ends in a documented close code (socker_core.CLOSE_CODES) or HTTP status,
while a well-behaved `websockets` client (the witness) walks the game server's
4-step flow on the same server around it. The `arena` teardown also checks that
the server's on_close ran exactly once per opened connection, that every
connection ended by itself, and that no thread or file descriptor outlived the
server (rawpeer.Arena).
"""

from __future__ import annotations

import base64
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.timing import deadline
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    Arena,
    arena_for,
    close_payload,
    frame,
    http_exchange,
    http_status,
    upgrade_request,
)

KiB = 1024


@pytest.fixture
def arena(driver: DriverHarness) -> Iterator[Arena]:
    with arena_for(driver) as arena:
        yield arena


def no_flow_opened(arena: Arena) -> None:
    assert arena.ledger.opened_labels() == ["/witness"]


# -- the opening handshake: an HTTP status, no flow ---------------------------------------

Request = Callable[[int], bytes]

HTTP_CASES: dict[str, tuple[Request, int]] = {
    "garbage": (lambda port: b"\x16\x03\x01\xff garbage\r\n\x00\x01\x02\r\n\r\n", 400),
    "empty request line": (lambda port: b"\r\n\r\n", 400),
    "not http": (lambda port: b"HELLO THERE\r\nHost: x\r\n\r\n", 400),
    "oversize request line": (lambda port: b"GET /" + b"a" * 8300 + b" HTTP/1.1\r\n\r\n", 414),
    "too many headers": (
        lambda port: upgrade_request(port, "/game", headers=[(f"X-H{i}", "v") for i in range(130)]),
        431,
    ),
    "too long header": (
        lambda port: upgrade_request(port, "/game", headers=[("X-Long", "v" * 8300)]),
        431,
    ),
    "malformed key": (lambda port: upgrade_request(port, "/game", key="not a key!"), 400),
    "short key": (
        lambda port: upgrade_request(port, "/game", key=base64.b64encode(b"8 bytes!").decode()),
        400,
    ),
    "wrong version": (lambda port: upgrade_request(port, "/game", version="12"), 426),
}


@pytest.mark.parametrize(("make_request", "status"), HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_bad_handshake_gets_an_http_status(
    arena: Arena, make_request: Request, status: int
) -> None:
    arena.start()
    witness = arena.witness()
    response = http_exchange(arena.port, make_request(arena.port))
    assert http_status(response) == status, response[:300]
    assert b"\r\nconnection: close\r\n" in response.lower()
    witness.finish()
    no_flow_opened(arena)


def test_bad_origin_gets_403(arena: Arena) -> None:
    arena.start(origins=["https://good.example"])
    witness = arena.witness()  # sends the good origin
    for origin in ("https://evil.example", None):
        request = upgrade_request(arena.port, "/game", origin=origin)
        assert http_status(http_exchange(arena.port, request)) == 403, origin
    witness.step()
    peer = arena.peer(origin="https://good.example")
    peer.game_steps(1)
    peer.send_close(1000)
    assert peer.expect_close() == (1000, b"")
    witness.finish()
    assert [end.code for end in arena.ledger.wait_ends("/game", 1)] == [1000]


def test_trickling_handshake_hits_open_timeout(arena: Arena) -> None:
    open_timeout = 0.5
    arena.start(open_timeout=open_timeout)
    witness = arena.witness()
    request = upgrade_request(arena.port, "/game")
    with socket.create_connection(("127.0.0.1", arena.port), timeout=deadline(5)) as sock:
        started = time.monotonic()
        sent = 0
        # One byte at a time; between bytes, wait (briefly) for the server's answer.
        while sent < len(request):
            sock.sendall(request[sent : sent + 1])
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
            assert time.monotonic() - started < deadline(3), "no answer to a trickle"
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    elapsed = time.monotonic() - started
    assert sent < len(request), "the whole request went through: trickle too fast"
    assert http_status(response) == 408, response
    assert open_timeout * 0.9 <= elapsed < deadline(3), elapsed
    witness.finish()
    no_flow_opened(arena)


# -- frames: protocol errors end in 1002 ---------------------------------------------------

PROTOCOL_ERRORS: dict[str, Callable[[], bytes]] = {
    "unmasked frame": lambda: frame(b"x", masked=False),
    "rsv1": lambda: frame(b"x", rsv=0b100),
    "rsv2": lambda: frame(b"x", rsv=0b010),
    "rsv3": lambda: frame(b"x", rsv=0b001),
    "reserved data opcode 3": lambda: frame(b"x", 0x3),
    "reserved data opcode 7": lambda: frame(b"x", 0x7),
    "reserved control opcode B": lambda: frame(b"x", 0xB),
    "reserved control opcode F": lambda: frame(b"x", 0xF),
    "fragmented ping": lambda: frame(b"x", OP_PING, fin=False),
    "fragmented close": lambda: frame(close_payload(1000), OP_CLOSE, fin=False),
    "oversize ping": lambda: frame(b"x" * 126, OP_PING),
    "continuation without a start": lambda: frame(b"x", OP_CONT),
    "new message inside a fragmented one": lambda: frame(b"a", fin=False) + frame(b"b"),
    "one-byte close payload": lambda: frame(b"\x03", OP_CLOSE),
    "close code 1005": lambda: frame(close_payload(1005), OP_CLOSE),
    "close code 999": lambda: frame(close_payload(999), OP_CLOSE),
}


@pytest.mark.parametrize("bad", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_closes_with_1002(arena: Arena, bad: Callable[[], bytes]) -> None:
    arena.start()
    witness = arena.witness()
    peer = arena.peer()
    peer.game_steps(1)
    peer.send(bad())
    code, _ = peer.expect_close()
    assert code == 1002
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("handshake", 1002)
    witness.finish()


# -- sizes: 1009 -----------------------------------------------------------------------------


def test_oversize_message_announced_in_the_header_closes_with_1009(arena: Arena) -> None:
    arena.start(max_size=64 * KiB)
    witness = arena.witness()
    peer = arena.peer()
    peer.game_steps(1)
    # Announce 1 MiB, send only the start: the server must refuse it from the header.
    peer.send(frame(b"x" * 100, length=1 << 20)[: 14 + 100])
    code, _ = peer.expect_close(reply="fin")  # a close frame would read as payload
    assert code == 1009
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("handshake", 1009)
    witness.finish()


def test_oversize_message_built_from_fragments_closes_with_1009(arena: Arena) -> None:
    arena.start(max_size=64 * KiB)
    witness = arena.witness()
    peer = arena.peer()
    peer.game_steps(1)
    part = b"p" * (30 * KiB)
    peer.send(frame(part, OP_BINARY, fin=False) + frame(part, OP_CONT, fin=False))
    peer.send(frame(part, OP_CONT, fin=True))  # each fragment fits; the sum does not
    code, _ = peer.expect_close()
    assert code == 1009
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("handshake", 1009)
    witness.finish()


# -- text and UTF-8: 1003, 1007 ----------------------------------------------------------------


def test_text_where_binary_is_expected_closes_with_1003(arena: Arena) -> None:
    arena.start()
    witness = arena.witness()
    peer = arena.peer()
    peer.game_steps(1)
    peer.send(frame(b"ready", OP_TEXT))
    code, _ = peer.expect_close()
    assert code == 1003
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("handshake", 1003)
    witness.finish()


INVALID_TEXT = {
    "one frame": lambda: frame(b"ready \xff\xfe", OP_TEXT),
    "second fragment": lambda: (
        frame(b"rea", OP_TEXT, fin=False) + frame(b"dy \xc3\x28", OP_CONT, fin=True)
    ),
}


@pytest.mark.parametrize("bad", INVALID_TEXT.values(), ids=INVALID_TEXT.keys())
def test_invalid_utf8_text_closes_with_1007(arena: Arena, bad: Callable[[], bytes]) -> None:
    arena.start(accept_text=True)
    witness = arena.witness()
    peer = arena.peer()
    peer.send(frame("hi ünï".encode(), OP_BINARY))  # the game's hello (a binary step)...
    peer.recv_data()
    peer.send(bad())  # ...then invalid UTF-8 in a text message
    code, _ = peer.expect_close()
    assert code == 1007
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code, end.state) == ("handshake", 1007, {"player": "ünï"})
    witness.finish()


def test_invalid_utf8_close_reason_closes_with_1007(arena: Arena) -> None:
    arena.start()
    witness = arena.witness()
    peer = arena.peer()
    peer.game_steps(1)
    peer.send(frame(close_payload(1000, b"bye \xff"), OP_CLOSE))
    code, _ = peer.expect_close()
    assert code == 1007
    witness.step()
    (end,) = arena.ledger.wait_ends("/game", 1)
    assert (end.step, end.code) == ("handshake", 1007)
    witness.finish()
