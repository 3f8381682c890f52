"""Deploy-safe servers on every driver, over real sockets: a drain lets a running
4-step flow finish with 1000 while new connections are refused; 1012 "service
restart" reaches clients; drain_timeout bounds a drain; `sock=`, a unix-domain
socket and `reuse_port=` serve the game flow."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from socker_transports import threaded
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.flows import (
    ANSWER_PREFIX,
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    Log,
    make_game_client,
    make_game_server,
    make_greeter,
)
from tests.transports.harness import DriverHarness
from tests.transports.test_conformance import closed_code


def server_close(running: Any, **kwargs: Any) -> None:
    """`Server.close(**kwargs)` on the driver's own thread or loop."""
    inner = running.inner
    portal = getattr(inner, "portal", None)
    if portal is not None:
        portal.call(lambda: inner.server.close(**kwargs))
    else:
        inner.server.close(**kwargs)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=deadline(1)) as sock:
            sock.settimeout(deadline(1))
            # Accepted into the backlog just as the listener closed: the kernel resets it.
            return sock.recv(1) == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False  # accepted and kept open: the server still accepts


def wait_until(condition: Callable[[], bool], what: str) -> None:
    limit = time.monotonic() + deadline(5)
    while not condition():
        assert time.monotonic() < limit, what
        time.sleep(0.01)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # A short path: AF_UNIX paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="sk") as path:
        yield path


def test_drain_lets_a_running_flow_finish_and_refuses_new_connections(
    start_server: StartServer,
) -> None:
    log = Log()
    server = start_server(make_game_server(log), close_timeout=deadline(2))
    with ws_connect(server.url, open_timeout=deadline(5)) as ws:
        ws.send(b"hi draining-player")
        assert ws.recv(timeout=deadline(5)) == SCENE  # step 2 of 4 now
        server_close(server, drain=True, drain_timeout=deadline(10))
        wait_until(lambda: refused(server.port), "the drained server still accepts")
        ws.send(b"ready")
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(ANSWER_PREFIX + b"v=0 o=ws")
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(b"spawn")
        assert ws.recv(timeout=deadline(5)) == SPAWNED
        ws.send(b"bye")
        assert closed_code(ws) == (1000, "flow complete")
    (end,) = log.wait_for(1, deadline(5))
    assert (end.step, end.code) == ("control", 1000)
    server.stop()


def test_drain_timeout_closes_what_is_left(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_greeter(log=log), close_timeout=deadline(2))
    with ws_connect(server.url, open_timeout=deadline(5)) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        started = time.monotonic()
        server_close(server, code=1012, drain=True, drain_timeout=0.2)
        assert closed_code(ws) == (1012, "service restart")
        assert 0.15 <= time.monotonic() - started < deadline(3)
    assert log.wait_for(1, deadline(5))[0].code == 1012


def test_service_restart_reaches_every_client(
    driver: DriverHarness, start_server: StartServer
) -> None:
    log = Log()
    server = start_server(make_greeter(log=log), close_timeout=deadline(2))
    with ws_connect(server.url, open_timeout=deadline(5)) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        server_close(server, code=1012)
        assert closed_code(ws) == (1012, "service restart")
    assert log.wait_for(1, deadline(5))[0].code == 1012


def test_serves_on_a_socket_someone_else_opened(
    driver: DriverHarness, start_server: StartServer
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    log = Log()
    start_server(make_game_server(log), sock=listener)
    result = driver.run_client(f"ws://127.0.0.1:{port}", make_game_client(), timeout=deadline(5))
    assert (result.code, result.reason) == (1000, "flow complete")
    assert log.wait_for(1, deadline(5))[0].code == 1000


def test_sock_must_be_listening(driver: DriverHarness) -> None:
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="listening"):
            driver.start_server(make_greeter(), sock=unbound)
    finally:
        unbound.close()


def test_unix_socket_server_and_client(
    driver: DriverHarness, start_server: StartServer, socket_dir: str
) -> None:
    path = os.path.join(socket_dir, "game.sock")
    log = Log()
    server = start_server({"/game": make_game_server(log)}, unix_socket=path)
    assert os.path.exists(path)
    result = driver.run_client(
        "ws://localhost/game", make_game_client(), timeout=deadline(5), unix_socket=path
    )
    assert (result.code, result.reason) == (1000, "flow complete")
    (end,) = log.wait_for(1, deadline(5))
    assert end.state["player"] == "p1"
    server.stop()
    assert not os.path.exists(path)  # the server removes its socket file


def test_reuse_port_lets_two_servers_share_a_port() -> None:
    first = threaded.serve(make_greeter(b"one"), "127.0.0.1", 0, reuse_port=True)
    try:
        second = threaded.serve(make_greeter(b"two"), "127.0.0.1", first.port, reuse_port=True)
        try:
            greetings = set()
            for _ in range(50):
                with ws_connect(first.url, open_timeout=deadline(5)) as ws:
                    greetings.add(ws.recv(timeout=deadline(5)))
                if len(greetings) == 2:
                    break
            # The kernel spreads connections over both; each one that answered is right.
            assert greetings <= {b"one", b"two"} and greetings
        finally:
            second.shutdown()
    finally:
        first.shutdown()
    with pytest.raises(OSError):
        # Without reuse_port the port is taken.
        blocker = threaded.serve(make_greeter(), "127.0.0.1", 0, reuse_port=True)
        try:
            threaded.serve(make_greeter(), "127.0.0.1", blocker.port)
        finally:
            blocker.shutdown()
