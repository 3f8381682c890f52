"""Big messages, sent back to back, echoed intact on every driver and backend, over
real sockets: the drivers now hand the wire views of one reused read buffer and
write big payloads unjoined (vectored writes, partial writes resumed mid-buffer),
so a message that spans many reads, or a read that carries the end of one message
and the start of the next, must still arrive byte for byte. Server side with a
`websockets` client; client side against a `websockets` server."""

from __future__ import annotations

import os

from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection

from socker_core import Close, Connection, Flow
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness import DriverHarness
from tests.transports.test_interop_websockets import websockets_server

MiB = 1024 * 1024
#: Sizes around the drivers' buffer sizes (64 KiB, 256 KiB) and the wire's JOIN_LIMIT.
SIZES = [3 * MiB + 1, 1, 262_144, 65_550, 16_383, 16_384, 1 * MiB, 125, 300_001]


def echo_flow() -> Flow:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    return flow


def test_big_messages_back_to_back_echo_intact(start_server: StartServer) -> None:
    server = start_server(echo_flow(), max_size=4 * MiB, max_send_buffer=64 * MiB)
    messages = [os.urandom(size) for size in SIZES]
    with ws_connect(
        server.url, max_size=4 * MiB, open_timeout=deadline(5), close_timeout=deadline(5)
    ) as ws:
        for message in messages:  # all sent before any echo is read
            ws.send(message)
        for message in messages:
            got = ws.recv(timeout=deadline(10))
            assert got == message, (len(got), len(message))


def test_a_client_sends_and_reads_big_messages_back_to_back(driver: DriverHarness) -> None:
    messages = [os.urandom(size) for size in SIZES]
    flow = Flow("big-client")

    @flow.on_open
    def start(conn: Connection) -> None:
        for message in messages:
            conn.send(message)

    @flow.step
    def check(conn: Connection, message: bytes) -> bool | Close:
        index = conn.state.count = getattr(conn.state, "count", 0) + 1
        if message != messages[index - 1]:
            return Close(4000, f"message {index} differs")
        return Close(1000, "all echoed") if index == len(messages) else False

    def handler(ws: ServerConnection) -> None:
        for _ in messages:
            ws.send(ws.recv(timeout=deadline(10)))
        ws.recv(timeout=deadline(10))  # until the client's close

    with websockets_server(handler, max_size=4 * MiB) as (url, errors):
        result = driver.run_client(
            url, flow, max_size=4 * MiB, max_send_buffer=64 * MiB, timeout=deadline(20)
        )
    assert not errors
    assert (result.code, result.reason) == (1000, "all echoed")


def test_thousands_of_big_messages_queued_at_once_all_arrive(start_server: StartServer) -> None:
    """One call queues 1,500 messages of 16 KiB: some 3,000 buffers for one vectored
    write, past the kernel's IOV_MAX (1,024): written in several calls."""
    count, size = 1500, 16 * 1024
    flow = Flow("burst")

    @flow.step
    def burst(conn: Connection, message: bytes) -> bool:
        for index in range(count):
            conn.send(index.to_bytes(4, "big") * (size // 4))
        return False

    server = start_server(flow, max_send_buffer=64 * MiB)
    with ws_connect(server.url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
        ws.send(b"go")
        for index in range(count):
            got = ws.recv(timeout=deadline(10))
            assert got == index.to_bytes(4, "big") * (size // 4), index
