"""Interop with the `websockets` library, a peer nobody here wrote: its client
against our server and our client against its server, running the same 4-step
game handshake as tests/transports/flows.py, plus the edges of the protocol
(subprotocols, big fragmented messages, pings, close codes)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server as WsServer
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from socker_core import Close, Connection, Flow
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
)
from tests.transports.harness import DriverHarness

Handler = Callable[[ServerConnection], None]


@contextmanager
def websockets_server(handler: Handler, **kwargs: object) -> Iterator[tuple[str, list[object]]]:
    """A websockets sync server on 127.0.0.1; yields (url, errors raised by handler)."""
    errors: list[object] = []

    def guarded(ws: ServerConnection) -> None:
        try:
            handler(ws)
        except ConnectionClosed:
            pass
        except Exception as exc:  # reported to the test
            errors.append(exc)

    server: WsServer = ws_serve(guarded, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name="websockets-server")
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}", errors
    finally:
        server.shutdown()
        thread.join(deadline(5))


def game_server_handler(seen: list[bytes]) -> Handler:
    """The game server's four steps, written against websockets directly."""

    def handler(ws: ServerConnection) -> None:
        seen.append(ws.recv(timeout=deadline(5), decode=False))  # hello
        ws.send(SCENE)
        assert ws.recv(timeout=deadline(5)) == b"ready"  # handshake
        ws.send(OFFER)
        answer = ws.recv(timeout=deadline(5))  # answer
        assert isinstance(answer, bytes) and answer.startswith(ANSWER_PREFIX)
        seen.append(answer)
        ws.send(CONNECTED)
        while True:  # control
            message = ws.recv(timeout=deadline(5), decode=False)
            seen.append(message)
            if message == b"spawn":
                ws.send(SPAWNED)
            elif message == b"bye":
                ws.close(1000, "flow complete")
                return

    return handler


def test_websockets_client_against_socker_server(start_server: StartServer) -> None:
    log = Log()
    server = start_server(make_game_server(log))
    with ws_connect(server.url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
        ws.send(b"hi ws-player")
        assert ws.recv(timeout=deadline(5)) == SCENE
        ws.send(b"ready")
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(ANSWER_PREFIX + b"v=0 o=websockets")
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(b"spawn")
        assert ws.recv(timeout=deadline(5)) == SPAWNED
        ws.send(b"bye")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=deadline(5))
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "flow complete")
    (end,) = log.wait_for(1, deadline(5))
    assert end.step == "control"
    assert end.state == {"player": "ws-player", "remote": "v=0 o=websockets"}


def test_socker_client_against_websockets_server(driver: DriverHarness) -> None:
    seen: list[bytes] = []
    log = Log()
    with websockets_server(game_server_handler(seen)) as (url, errors):
        result = driver.run_client(url, make_game_client(log), timeout=deadline(5))
    assert not errors
    assert (result.code, result.reason, result.handshake_status) == (1000, "flow complete", 101)
    assert seen == [b"hi p1", ANSWER_PREFIX + b"v=0 o=client", b"spawn", b"bye"]
    (end,) = log.wait_for(1, deadline(5))
    assert end.state["spawned"] is True


def test_subprotocol_negotiation(driver: DriverHarness, start_server: StartServer) -> None:
    flow = Flow("proto")

    @flow.on_open
    def hello(conn: Connection) -> None:
        conn.send(b"hello")

    @flow.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    server = start_server(flow, subprotocols=["game.v2", "game.v1"])
    with ws_connect(server.url, subprotocols=["game.v1", "chat"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "game.v1"
    chosen: list[str | None] = []

    def handler(ws: ServerConnection) -> None:
        chosen.append(ws.subprotocol)
        ws.close(4100, "checked")

    with websockets_server(handler, subprotocols=["game.v1"]) as (url, errors):
        result = driver.run_client(url, make_game_client(), subprotocols=["game.v1"], timeout=5)
    assert not errors
    assert chosen == ["game.v1"]
    assert (result.code, result.reason) == (4100, "checked")


def test_big_fragmented_messages_both_ways(driver: DriverHarness) -> None:
    """websockets fragments what it sends; socker reassembles and answers big."""
    big = bytes(range(256)) * 4096  # 1 MiB
    flow = Flow("big")

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(b"go")

    @flow.step
    def echo(conn: Connection, message: bytes) -> Close:
        conn.send(message[::-1])
        return Close(1000, "echoed")

    def handler(ws: ServerConnection) -> None:
        assert ws.recv(timeout=deadline(5)) == b"go"
        ws.send([big[:300_000], big[300_000:]])  # one message in two fragments
        assert ws.recv(timeout=deadline(5)) == big[::-1]
        ws.recv(timeout=deadline(5))  # until the client's close

    with websockets_server(handler, max_size=2 * len(big)) as (url, errors):
        result = driver.run_client(url, flow, max_size=2 * len(big), timeout=deadline(10))
    assert not errors
    assert (result.code, result.reason) == (1000, "echoed")


def test_socker_client_answers_pings(driver: DriverHarness) -> None:
    """A websockets server with a fast keepalive keeps a quiet socker client."""
    flow = Flow("quiet")
    timeout = deadline(0.3)

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return message == b"done"

    def handler(ws: ServerConnection) -> None:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=3 * timeout)  # many pings are answered meanwhile
        ws.send(b"done")
        ws.recv(timeout=deadline(5))

    with websockets_server(handler, ping_interval=0.05, ping_timeout=timeout) as (url, errors):
        result = driver.run_client(url, flow, timeout=deadline(5))
    assert not errors
    assert (result.code, result.reason) == (1000, "flow complete")


def test_websockets_server_close_code_reaches_socker_client(driver: DriverHarness) -> None:
    def handler(ws: ServerConnection) -> None:
        ws.close(4003, "not welcome")

    log = Log()
    with websockets_server(handler) as (url, errors):
        result = driver.run_client(url, make_game_client(log), timeout=deadline(5))
    assert not errors
    assert (result.code, result.reason, result.handshake_status) == (4003, "not welcome", 101)
    assert log.wait_for(1, deadline(5))[0].code == 4003


def test_websockets_server_rejection_is_a_result(driver: DriverHarness) -> None:
    def reject(connection: ServerConnection, request: object) -> object:
        return connection.respond(403, "go away\n")

    with websockets_server(lambda ws: None, process_request=reject) as (url, _):
        result = driver.run_client(url, make_game_client(), timeout=deadline(5))
    assert result.handshake_status == 403
    assert not result.ok
