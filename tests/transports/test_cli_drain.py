"""`socker serve --drain-timeout`: on SIGTERM the server stops accepting, lets the
running game flow finish with 1000, then exits 0; without the flag SIGTERM closes
with 1001 at once (tests/transports/test_cli.py)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect as ws_connect

from tests.timing import deadline
from tests.transports.flows import ANSWER_PREFIX, CONNECTED, OFFER, SCENE, SPAWNED
from tests.transports.test_cli import ServeProcess
from tests.transports.test_conformance import closed_code


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=deadline(1)).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the listening socket closed while this connection sat in its
        # backlog (the server stopped accepting mid-handshake): not accepted either.
        return True
    return False


@pytest.mark.parametrize(
    "driver_args",
    [("--backend", "asyncio"), ("--backend", "trio"), ("--driver", "threaded")],
    ids=["asyncio", "trio", "threaded"],
)
def test_sigterm_drains(serve_process: type[ServeProcess], driver_args: tuple[str, ...]) -> None:
    server = serve_process(
        "tests.transports.flows:game_server",
        "--close-timeout",
        "2",
        "--drain-timeout",
        str(deadline(20)),
        *driver_args,
    )
    port = int(server.url.rsplit(":", 1)[1])
    with ws_connect(server.url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
        ws.send(b"hi draining")
        assert ws.recv(timeout=deadline(5)) == SCENE
        server.proc.send_signal(signal.SIGTERM)
        limit = time.monotonic() + deadline(5)
        while not refused(port):
            assert time.monotonic() < limit, "the draining server still accepts"
            time.sleep(0.01)
        assert server.proc.poll() is None  # still serving the live flow
        ws.send(b"ready")
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(ANSWER_PREFIX + b"v=0 o=ws")
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(b"spawn")
        assert ws.recv(timeout=deadline(5)) == SPAWNED
        ws.send(b"bye")
        assert closed_code(ws) == (1000, "flow complete")
    assert server.proc.wait(deadline(10)) == 0
