"""Rooms under ASGI: `conn.join` / `conn.leave` in flows an `App` serves, and the
App's `room`, `rooms`, `broadcast`, `publish` and `presence`, over the real ASGI
stacks (FastAPI + uvicorn, Starlette + hypercorn on asyncio and trio) with socker
clients; in-process rooms and `engine="memory://"` alike. Then, against an in-memory
ASGI server: ordering inside on_open, and a peer that stops reading is dropped
(4503) without holding back the other members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from socker_core import CloseCode, Connection, Flow
from socker_transports.asgi import App
from socker_transports.engine import StreamPosition
from tests.asgi.harness_asgi import STACKS
from tests.asgi.room_peers import Peer, asgi_servers, peers, run_on, wait_for
from tests.asgi.servers import ServerThread
from tests.asgi.test_asgi_app import FakeServer, until

__all__ = ["asgi_servers", "peers"]


def names(members: dict[str, dict[str, str]]) -> set[str]:
    return {info["name"] for info in members.values()}


@pytest.mark.parametrize("engine", [None, "memory://"], ids=["in-process", "memory-engine"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_join_broadcast_skip_presence_and_leave(
    stack: str,
    engine: str | None,
    asgi_servers: Callable[..., tuple[App, ServerThread]],
    peers: Callable[[str], Peer],
) -> None:
    app, server = asgi_servers(stack, engine=engine)
    url = server.url + "/"
    ada, bob, cy = peers(url), peers(url), peers(url)
    for peer, name in ((ada, "ada"), (bob, "bob"), (cy, "cy")):
        assert peer.ask(f"join lobby {name}") == "joined"

    # A handler's broadcast (conn.server is the App) reaches every member, in order.
    assert ada.ask("say lobby hi") == "count:3"
    # skip= leaves the sender out; the next broadcast shows it never got the shout.
    assert bob.ask("shout lobby psst") == "count:2"
    assert cy.ask("say lobby after") == "count:3"
    assert ada.messages(3) == [b"b:hi", b"b:psst", b"b:after"]
    assert cy.messages(3) == [b"b:hi", b"b:psst", b"b:after"]
    assert bob.messages(2) == [b"b:hi", b"b:after"]

    # Presence: member id -> the info given to join.
    members = ada.who("lobby")
    assert names(members) == {"ada", "bob", "cy"}
    assert len(members) == 3

    # From outside any handler, on the server's loop: room, rooms, broadcast, publish.
    async def from_app() -> tuple[int, int, frozenset[str], int, StreamPosition, StreamPosition]:
        await app.rooms_settled()
        room_size, rooms = len(app.room("lobby")), app.rooms
        # (Without room= a broadcast stays local: sent at once, before the queued
        # cluster-wide ones that follow, with an engine as without.)
        to_all = app.broadcast(b"b:to everyone")
        to_room = app.broadcast(b"b:from the app", room="lobby")
        first = await app.publish(b"b:one", room="lobby")
        second = await app.publish(b"b:two", room="lobby")
        return room_size, to_room, rooms, to_all, first, second

    room_size, to_room, rooms, to_all, first, second = run_on(server, from_app)
    assert (room_size, to_room, rooms, to_all) == (3, 3, frozenset({"lobby"}), 3)
    assert second.offset == first.offset + 1 and second.epoch == first.epoch
    for peer in (ada, bob, cy):
        peer.room_messages.clear()
        assert peer.messages(4) == [b"b:to everyone", b"b:from the app", b"b:one", b"b:two"]

    # A connection that ends leaves its rooms; so does an explicit leave.
    cy.close()
    wait_for(lambda: names(ada.who("lobby")) == {"ada", "bob"})
    assert bob.ask("leave lobby") == "left"
    assert names(ada.who("lobby")) == {"ada"}
    ada.room_messages.clear()
    assert ada.ask("say lobby last") == "count:1"
    assert ada.messages(1) == [b"b:last"]
    assert run_on(server, _rooms_of(app)) == (frozenset({"lobby"}), 1)


def _rooms_of(app: App) -> Callable[[], Any]:
    async def read() -> tuple[frozenset[str], int]:
        return app.rooms, len(app.room("lobby"))

    return read


# -- against an in-memory ASGI server -------------------------------------------------


class StalledServer(FakeServer):
    """A peer that stops reading: every `send` after the accept waits forever."""

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.send":
            await anyio.sleep_forever()


def room_flow(ended: dict[str, int | None]) -> Flow:
    flow = Flow("room")

    @flow.on_open
    def enter(conn: Connection) -> None:
        conn.send(b"hello")
        conn.join("r")
        conn.server.broadcast(b"welcome " + conn.id.encode(), room="r")

    @flow.step
    def idle(conn: Connection, message: bytes) -> bool:
        return False

    @flow.on_close
    def record(conn: Connection) -> None:
        ended[conn.id] = conn.close_code

    return flow


MiB = 1024 * 1024


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_peer_that_stops_reading_is_dropped_and_holds_back_no_one(backend: str) -> None:
    async def main() -> None:
        ended: dict[str, int | None] = {}
        app = App(room_flow(ended))
        stalled, reader = StalledServer(), FakeServer()
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, stalled.scope, stalled.receive, stalled.send)
            await stalled.put({"type": "websocket.connect"})
            await until(lambda: len(app.room("r")) == 1)
            tg.start_soon(app, reader.scope, reader.receive, reader.send)
            await reader.put({"type": "websocket.connect"})
            await until(lambda: len(app.room("r")) == 2)
            (slow_id,) = (c.id for c in app.connections.values() if c._send == stalled.send)
            (fast_id,) = (c.id for c in app.connections.values() if c._send == reader.send)
            # In on_open: its own send, then the broadcast it made after joining.
            await until(lambda: len(reader.data()) >= 2)
            assert reader.data()[:2] == [b"hello", b"welcome " + fast_id.encode()]
            chunk = b"x" * MiB
            for n in range(20):  # 20 MiB: past the 16 MiB bound of the stalled peer
                app.broadcast(b"%02d" % n + chunk, room="r")
                # The reader keeps up (its writer hands each on): only the stalled
                # peer's queue grows.
                await until(lambda n=n: len(reader.data()) == 3 + n)
            await until(lambda: slow_id in ended)
            assert ended[slow_id] == CloseCode.SEND_BUFFER_OVERFLOW == 4503
            assert [c.id for c in app.room("r")] == [fast_id]
            await until(lambda: len(reader.data()) == 22)
            assert [m[:2] for m in reader.data()[2:]] == [b"%02d" % n for n in range(20)]
            await reader.put({"type": "websocket.disconnect", "code": 1000})
            await until(lambda: not app.connections)
        assert ended[fast_id] == 1000
        assert app.rooms == frozenset()

    anyio.run(main, backend=backend)
