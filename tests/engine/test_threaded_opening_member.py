"""Threaded driver: a room member still in its on_open hooks is not registered with
its link yet; a broadcast (local, or an engine's delivery from the engine's thread)
made meanwhile from another thread reaches it once the hooks are done, instead of
being skipped."""

from __future__ import annotations

import threading

import pytest
from websockets.sync.client import connect as ws_connect

from socker_core import Connection, Flow
from socker_transports import threaded
from tests.timing import deadline


@pytest.mark.parametrize("engine", [None, "memory://"])
def test_a_member_in_its_on_open_hooks_gets_the_broadcast(engine: str | None) -> None:
    joined, release = threading.Event(), threading.Event()
    flow = Flow("opening")

    @flow.on_open
    def enter(conn: Connection) -> None:
        conn.join("r")
        joined.set()
        release.wait(deadline(10))  # the test broadcasts while this hook runs
        conn.send(b"welcome")

    @flow.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    with threaded.serve(flow, engine=engine, close_timeout=2) as server:
        got: list[bytes] = []

        def player() -> None:
            with ws_connect(server.url, open_timeout=deadline(5)) as ws:
                for _ in range(2):
                    data = ws.recv(timeout=deadline(10))
                    assert isinstance(data, bytes)
                    got.append(data)

        thread = threading.Thread(target=player)
        thread.start()
        try:
            assert joined.wait(deadline(10))
            assert server.broadcast(b"news", room="r") == 1
        finally:
            release.set()
            thread.join(deadline(20))
        assert not thread.is_alive()
        assert got == [b"welcome", b"news"]
