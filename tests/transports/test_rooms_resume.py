"""Rooms and resume together, on every driver: broadcasts to a member whose transport
is cut (RST, or a silent drop) reach it after it resumes, every one once and in
order, and it stays in its rooms while detached."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from socker_core import Close, Connection, Flow
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness import DriverHarness
from tests.transports.test_resume import KEEPALIVE, SESSION, proxy_for  # noqa: F401 (fixture)

SHOUTS = 30
# Server -> player bytes after the 101: the "session" control message, the
# 9-byte welcome frame, then 3- and 4-byte broadcast frames: the cut falls among them.
CUT_AT = SESSION + 9 + 20


def _server_flow(joined: threading.Event, members: list[int]) -> Flow:
    flow = Flow("arena", resume_window=deadline(10.0))

    @flow.step
    def hello(conn: Connection, message: bytes) -> bool:
        if message == b"player":
            conn.join("match")
            joined.set()
        conn.send(b"welcome")
        return True

    @flow.step
    def play(conn: Connection, message: bytes) -> bool:
        if message.startswith(b"shout:"):
            members.append(len(conn.server.room("match")))
            conn.server.broadcast(message[6:], room="match")
        elif message == b"end":
            conn.server.broadcast(b"end", room="match")
        return False

    return flow


@pytest.mark.parametrize("mode", ["rst", "silent"])
def test_broadcasts_to_a_cut_member_arrive_after_it_resumes(
    driver: DriverHarness,
    start_server: StartServer,
    proxy_for: Any,  # noqa: F811 (the fixture imported above)
    mode: str,
    *,
    member_while_detached: bool = True,
) -> None:
    joined = threading.Event()
    members: list[int] = []
    server = start_server(_server_flow(joined, members), **KEEPALIVE)
    proxy = proxy_for(server.port)
    proxy.plan([CUT_AT], mode)

    heard: list[bytes] = []
    resumed: list[str] = []
    player = Flow("player")
    player.on_open(lambda conn: conn.send(b"player"))
    player.on_resume(lambda conn: resumed.append(conn.step))
    player.add(lambda conn, message: message == b"welcome", name="welcome")

    @player.step
    def listen(conn: Connection, message: bytes) -> bool:
        heard.append(message)
        return message == b"end"

    outcome: dict[str, Any] = {}

    def play() -> None:
        outcome["result"] = driver.run_client(
            proxy.url, player, timeout=deadline(20.0), reconnect=True, **KEEPALIVE
        )

    thread = threading.Thread(target=play)
    thread.start()
    try:
        assert joined.wait(deadline(10.0))
        shouter = Flow("shouter")
        shouter.on_open(lambda conn: conn.send(b"spectator"))

        @shouter.step
        def shout(conn: Connection, message: bytes) -> Close:
            for i in range(SHOUTS):
                conn.send(b"shout:%d" % i)
            conn.send(b"end")
            return Close(1000, "done")

        assert driver.run_client(server.url, shouter, timeout=deadline(10.0)).code == 1000
    finally:
        thread.join(deadline(30.0))
    assert not thread.is_alive()
    assert outcome["result"].code == 1000, outcome["result"]
    assert proxy.cuts == 1
    assert resumed == ["listen"]  # resumed at its step
    assert heard == [b"%d" % i for i in range(SHOUTS)] + [b"end"]  # each once, in order
    if member_while_detached:
        assert members == [1] * SHOUTS  # still a member of the room while detached
