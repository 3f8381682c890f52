"""The opening handshake's strict rules, against every driver and backend over real
sockets (README: "Opening handshake: what is refused").

An upgrade request with a body or body framing, obsolete line folding or a bare LF
is refused with 400, an HTTP version other than 1.1 to 1.9 with 505, and bytes
that can never become a request with an immediate 400 (not the 408 of
`open_timeout`). No flow opens for any of them: bytes after a request head are
frames only if the head was a valid bodiless upgrade. A witness walks its flow on
the same server throughout (rawpeer.Arena also checks for leaks).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.timing import deadline
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import (
    Arena,
    arena_for,
    frame,
    http_exchange,
    http_status,
    upgrade_request,
)

#: Long enough that a 408 would be noticed: the refusals must come well before it.
OPEN_TIMEOUT = 5.0


@pytest.fixture
def arena(driver: DriverHarness) -> Iterator[Arena]:
    with arena_for(driver) as arena:
        yield arena


def no_flow_opened(arena: Arena) -> None:
    assert arena.ledger.opened_labels() == ["/witness"]


def with_lines(port: int, *lines: str, version: str = "HTTP/1.1") -> bytes:
    """A valid upgrade request, its request line's version replaced, `lines` added."""
    request = upgrade_request(port, "/game", headers=[])
    head = request[:-4].decode("latin-1").replace(" HTTP/1.1", " " + version, 1)
    return ("\r\n".join([head, *lines]) + "\r\n\r\n").encode("latin-1")


BODY = frame(b"smuggled")  # a masked frame: what a body would run as if upgraded

Request = Callable[[int], bytes]

REFUSED: dict[str, tuple[Request, int]] = {
    "content-length body": (
        lambda port: with_lines(port, f"Content-Length: {len(BODY)}") + BODY,
        400,
    ),
    "chunked body": (
        lambda port: with_lines(port, "Transfer-Encoding: chunked") + b"0\r\n\r\n",
        400,
    ),
    "both framings": (
        lambda port: with_lines(port, "Content-Length: 5", "Transfer-Encoding: chunked") + BODY,
        400,
    ),
    "obsolete line folding": (lambda port: with_lines(port, "X-Folded: a", " b"), 400),
    "HTTP/1.0": (lambda port: with_lines(port, version="HTTP/1.0"), 505),
    "HTTP/2.0": (lambda port: with_lines(port, version="HTTP/2.0"), 505),
    "HTTP/0.9": (lambda port: with_lines(port, version="HTTP/0.9"), 505),
}


@pytest.mark.parametrize(("make_request", "status"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_upgrade_requests(arena: Arena, make_request: Request, status: int) -> None:
    arena.start(open_timeout=OPEN_TIMEOUT)
    witness = arena.witness()
    started = time.monotonic()
    response = http_exchange(arena.port, make_request(arena.port))
    assert http_status(response) == status, response[:300]
    assert b"HTTP/1.1 101" not in response
    assert time.monotonic() - started < deadline(1.0)
    witness.finish()
    no_flow_opened(arena)


def test_content_length_zero_is_no_body(arena: Arena) -> None:
    arena.start()
    witness = arena.witness()
    peer = arena.peer(handshake=False)
    peer.send(with_lines(arena.port, "Content-Length: 0"))
    assert peer.read_head().startswith(b"HTTP/1.1 101")
    peer.game_steps(1)
    peer.send_close(1000)
    assert peer.expect_close() == (1000, b"")
    witness.finish()


# What can never become a request: refused as soon as it is seen, without waiting
# for the rest of a head (or for open_timeout).
TLS_CLIENT_HELLO = bytes.fromhex("160301020001") + os.urandom(64)

NEVER_A_REQUEST: dict[str, Callable[[int], bytes]] = {
    "tls client hello": lambda port: TLS_CLIENT_HELLO,
    "random bytes": lambda port: b"\x00\xff" + os.urandom(30),
    "binary after a method": lambda port: b"GET \x00\x01",
    "no space after the target": lambda port: b"GET /\x7f",
    "bad version prefix": lambda port: b"GET / HTTX",
    "bare-LF request": lambda port: upgrade_request(port, "/game").replace(b"\r\n", b"\n"),
    "bare LF in a header": lambda port: b"GET / HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n",
    "complete bad request line": lambda port: b"GET / HTTP/1.1 extra\r\nHost: x\r\n",
}


@pytest.mark.parametrize("make_bytes", NEVER_A_REQUEST.values(), ids=NEVER_A_REQUEST.keys())
def test_bytes_that_cannot_be_a_request_get_an_immediate_400(
    arena: Arena, make_bytes: Callable[[int], bytes]
) -> None:
    arena.start(open_timeout=OPEN_TIMEOUT)
    witness = arena.witness()
    with socket.create_connection(("127.0.0.1", arena.port), timeout=deadline(5)) as sock:
        started = time.monotonic()
        sock.sendall(make_bytes(arena.port))  # and nothing more: no blank line, no EOF
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
        elapsed = time.monotonic() - started
    assert http_status(response) == 400, response
    assert elapsed < min(deadline(1.0), OPEN_TIMEOUT / 2), elapsed
    witness.finish()
    no_flow_opened(arena)
