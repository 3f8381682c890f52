"""The `on_event` hook and `logger=` on every driver, servers and clients, over real
loopback sockets: which events a scripted session produces, in which order."""

from __future__ import annotations

import logging
import threading
from typing import Any

from socker_core import Connection, Flow
from socker_transports.wire.observe import (
    ConnectionClosed,
    ConnectionOpened,
    HandlerFinished,
    HandlerRaised,
    HandshakeRefused,
    MessageReceived,
    MessageSent,
    ObservedEvent,
    StepEntered,
)
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.flows import Log, make_game_client, make_game_server, make_sink
from tests.transports.harness import DriverHarness


class Recorder:
    """Collects events from any thread; waits for a close to arrive."""

    def __init__(self) -> None:
        self.events: list[ObservedEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: ObservedEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_closed(self, count: int = 1) -> list[ObservedEvent]:
        def done() -> bool:
            return sum(isinstance(e, ConnectionClosed) for e in self.events) >= count

        with self._changed:
            assert self._changed.wait_for(done, deadline(5)), self.events
            return list(self.events)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def test_a_game_session_seen_by_both_sides(
    driver: DriverHarness, start_server: StartServer
) -> None:
    server_events, client_events = Recorder(), Recorder()
    server = start_server({"/game": make_game_server()}, on_event=server_events)
    result = driver.run_client(
        server.url + "/game", make_game_client(), timeout=deadline(5), on_event=client_events
    )
    assert result.ok, result
    events = server_events.wait_closed()
    client_events.wait_closed()

    opened = [e for e in events if isinstance(e, ConnectionOpened)]
    assert [(e.side, e.flow, e.path) for e in opened] == [("server", "game-server", "/game")]
    conn_id = opened[0].id
    assert all(getattr(e, "id", conn_id) == conn_id for e in events)
    assert [(e.from_step, e.step) for e in server_events.of(StepEntered)] == [
        (None, "hello"),
        ("hello", "handshake"),
        ("handshake", "answer"),
        ("answer", "control"),
    ]
    # hi, ready, answer, spawn, bye in; scene, offer, connected, spawned out.
    assert len(server_events.of(MessageReceived)) == 5
    assert len(server_events.of(MessageSent)) == 4
    finished = server_events.of(HandlerFinished)
    assert [e.step for e in finished] == ["hello", "handshake", "answer", "control", "control"]
    assert all(e.duration >= 0 for e in finished)
    (closed,) = server_events.of(ConnectionClosed)
    assert (closed.code, closed.reason, closed.initiated_locally) == (1000, "flow complete", True)
    assert closed.duration > 0
    assert isinstance(events[0], ConnectionOpened) and events[-1] is closed

    # The client saw its side of it, its async `offer` step timed too.
    (client_open,) = client_events.of(ConnectionOpened)
    assert client_open.side == "client"
    client_steps = [e.step for e in client_events.of(HandlerFinished)]
    assert client_steps[:4] == ["scene", "offer", "connected", "control"]
    (client_closed,) = client_events.of(ConnectionClosed)
    assert (client_closed.code, client_closed.initiated_locally) == (1000, False)


def test_refused_handshakes_and_handler_failures(
    driver: DriverHarness, start_server: StartServer
) -> None:
    events = Recorder()
    flow = Flow("fragile")

    @flow.step
    def explode(conn: Connection, message: bytes) -> bool:
        raise ValueError("boom")

    @flow.on_open
    def poke(conn: Connection) -> None:
        conn.send(b"go")

    server = start_server({"/fragile": flow}, on_event=events)
    refused = driver.run_client(server.url + "/nowhere", make_sink(), timeout=deadline(5))
    assert refused.handshake_status == 404
    echo = Flow("echo-once")
    echo.add(lambda conn, message: conn.send(b"x") or False)
    result = driver.run_client(server.url + "/fragile", echo, timeout=deadline(5))
    assert result.code == 1011
    events.wait_closed()
    assert [(e.status, e.path) for e in events.of(HandshakeRefused)] == [(404, "/nowhere")]
    (raised,) = events.of(HandlerRaised)
    assert (raised.flow, raised.step, type(raised.exception)) == ("fragile", "explode", ValueError)
    assert [e.code for e in events.of(ConnectionClosed)] == [1011]


def test_a_raising_hook_is_logged_not_fatal(
    driver: DriverHarness, start_server: StartServer, caplog: Any
) -> None:
    def hook(event: ObservedEvent) -> None:
        raise RuntimeError("observer bug")

    log = Log()
    server = start_server(make_game_server(log), on_event=hook)
    with caplog.at_level(logging.ERROR, logger="socker"):
        result = driver.run_client(server.url, make_game_client(), timeout=deadline(5))
        assert result.ok, result
        log.wait_for(1, deadline(5))
    assert any("on_event hook raised" in r.getMessage() for r in caplog.records)


def test_logger_option(driver: DriverHarness, start_server: StartServer, caplog: Any) -> None:
    mine = logging.getLogger("my.game.server")
    theirs = logging.getLogger("my.game.client")
    server = start_server(make_game_server(), logger=mine)
    with caplog.at_level(logging.INFO):
        result = driver.run_client(
            server.url, make_game_client(), timeout=deadline(5), logger=theirs
        )
        assert result.ok
        server.stop()
    opens = {
        (r.name, r.getMessage().split(":")[0].split()[0])
        for r in caplog.records
        if ": open " in r.getMessage()
    }
    assert opens == {("my.game.server", "server"), ("my.game.client", "client")}
