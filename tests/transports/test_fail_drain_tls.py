"""test_fail_drain.py over TLS: after failing a connection the server still reads
and discards, bounded by `close_timeout`, so a TLS peer's close reply is read
rather than met with a reset, and a peer that never answers is dropped after
`close_timeout`, not at once. Every driver and backend, server side, a real TLS
socket as the peer."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from socker_core import Connection, Flow
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness import RunningServer
from tests.transports.rawpeer import RawPeer
from tests.transports.test_fail_drain import BAD_INPUT, MAX_SIZE, orderly_end, read_until_close


def echo() -> Flow:
    flow = Flow("tls-echo")

    @flow.step
    def echo(conn: Connection, message: bytes | str) -> bool:
        conn.send(message)
        return False

    return flow


def tls_peer(port: int, context: ssl.SSLContext) -> RawPeer:
    raw = socket.create_connection(("127.0.0.1", port), timeout=deadline(5))
    try:
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise
    peer = RawPeer(tls)
    try:
        peer.handshake(port, "/")
    except BaseException:
        peer.close()
        raise
    return peer


def wait_idle(server: RunningServer, seconds: float) -> None:
    end = time.monotonic() + seconds
    while server.active_connections():
        assert time.monotonic() < end, "never dropped"
        time.sleep(0.01)  # a bounded poll of the server's count


@pytest.mark.parametrize(("bad", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_a_tls_close_reply_after_a_failure_meets_an_orderly_end(
    start_server: StartServer,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    bad: bytes,
    code: int,
) -> None:
    server_ctx, client_ctx = tls_contexts
    server = start_server(
        echo(),
        ssl=server_ctx,
        accept_text=True,
        max_size=MAX_SIZE,
        linger_timeout=None,
        close_timeout=deadline(5),
    )
    for _ in range(2):
        peer = tls_peer(server.port, client_ctx)
        peer.send(bad)
        assert read_until_close(peer) == code
        peer.send_close(code)  # a conforming peer answers the close frame
        assert orderly_end(peer.sock), "the close reply was met with a reset"
        peer.close()
    wait_idle(server, deadline(5))


@pytest.mark.parametrize(("bad", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_a_tls_peer_that_never_answers_is_dropped_after_close_timeout(
    start_server: StartServer,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    bad: bytes,
    code: int,
) -> None:
    server_ctx, client_ctx = tls_contexts
    close_timeout = deadline(1)
    server = start_server(
        echo(),
        ssl=server_ctx,
        accept_text=True,
        max_size=MAX_SIZE,
        linger_timeout=None,
        close_timeout=close_timeout,
    )
    peer = tls_peer(server.port, client_ctx)
    peer.send(bad)
    assert read_until_close(peer) == code
    started = time.monotonic()
    wait_idle(server, close_timeout + deadline(5))
    waited = time.monotonic() - started
    assert waited >= close_timeout * 0.5, f"dropped after {waited:.2f}s, not close_timeout"
    assert orderly_end(peer.sock)  # the end of the stream, no reset
    peer.close()
