"""Servers made with `engine=`: rooms, broadcast, publish and presence go cluster-wide
through the engine, on every driver and backend (anyio on asyncio, uvloop and trio;
threaded through BlockingEngine), over real loopback sockets, with the in-process
engine ("memory://") and a real redis-server (two servers sharing one Redis are two
workers).

The server flow answers commands from a `websockets` client: "join ROOM [NAME]",
"leave ROOM", "say ROOM TEXT" (broadcast), "shout ROOM TEXT" (skip the sender),
"pub ROOM TEXT" (publish, confirmed), "joinsay ROOM TEXT" (join and broadcast in one
handler), "who ROOM" (presence). Replies start with "r:", room messages with "b:".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from socker_core import Connection, Flow
from socker_transports.engine import (
    BlockingEngine,
    EngineError,
    EngineUnavailable,
    LocalEngine,
    StreamPosition,
)
from socker_transports.engine.redis_engine import RedisEngine
from socker_transports.wire.observe import ObservedEvent, PublishFailed
from tests.engine.conftest import RedisServer
from tests.timing import deadline
from tests.transports.conftest import DRIVERS
from tests.transports.harness import DriverHarness, RunningServer

# -- the server's flow ----------------------------------------------------------------


def _reply(conn: Connection, text: str) -> None:
    conn.send(b"r:" + text.encode())


def _command(
    conn: Connection,
    message: bytes,
    publish: Callable[[bytes, str, Any], Any],
    presence: Callable[[str], Any],
) -> Any:
    """One command; returns what to wait for (anyio) as a pair (kind, value)."""
    verb, _, rest = message.decode().partition(" ")
    room, _, text = rest.partition(" ")
    server = conn.server
    if verb == "join":
        conn.join(room, {"name": text} if text else None)
        _reply(conn, "joined")
    elif verb == "leave":
        conn.leave(room)
        _reply(conn, "left")
    elif verb in ("say", "shout", "joinsay"):
        if verb == "joinsay":
            conn.join(room)
        try:
            count = server.broadcast(
                b"b:" + text.encode(), room=room, skip=conn if verb == "shout" else None
            )
        except EngineUnavailable:
            _reply(conn, "unavailable")
        else:
            _reply(conn, f"count:{count}")
    elif verb == "burst":  # "burst ROOM TAG:N": N broadcasts in a row, TAG:0 .. TAG:N-1
        tag, _, count = text.partition(":")
        for n in range(int(count)):
            server.broadcast(f"b:{tag}:{n}".encode(), room=room)
        _reply(conn, "burst")
    elif verb == "pub":
        return ("pub", publish(b"b:" + text.encode(), room, None))
    elif verb == "who":
        return ("who", presence(room))
    return None


def _finish(conn: Connection, kind: str, result: Any) -> None:
    if kind == "pub":
        assert isinstance(result, StreamPosition)
        _reply(conn, f"pos:{result.offset}")
    else:
        _reply(conn, "who:" + json.dumps(result, sort_keys=True))


def anyio_flow() -> Flow:
    flow = Flow("engine-rooms")

    @flow.step
    async def command(conn: Connection, message: bytes) -> bool:
        server = conn.server

        def publish(data: bytes, room: str, skip: Any) -> Any:
            return server.publish(data, room=room, skip=skip)

        pending = _command(conn, message, publish, server.presence)
        if pending is not None:
            kind, awaitable = pending
            try:
                result = await awaitable
            except EngineUnavailable:
                _reply(conn, "unavailable")
            except EngineError as exc:
                _reply(conn, f"error:{exc}")
            else:
                _finish(conn, kind, result)
        return False

    return flow


def threaded_flow() -> Flow:
    flow = Flow("engine-rooms")

    @flow.step
    def command(conn: Connection, message: bytes) -> bool:
        server = conn.server

        def publish(data: bytes, room: str, skip: Any) -> Any:
            return server.publish(data, room=room, skip=skip)

        try:
            pending = _command(conn, message, publish, server.presence)
        except EngineUnavailable:
            _reply(conn, "unavailable")
        except EngineError as exc:
            _reply(conn, f"error:{exc}")
        else:
            if pending is not None:
                _finish(conn, *pending)
        return False

    return flow


def flow_for(driver: DriverHarness) -> Flow:
    return threaded_flow() if driver.name == "threaded" else anyio_flow()


# -- clients --------------------------------------------------------------------------


class CommandPeer:
    """A client of the command protocol above, over any transport: a subclass gives
    `recv` (the next message) and `send_command`, and sets `room_messages = []`."""

    room_messages: list[bytes]

    def recv(self) -> bytes:
        raise NotImplementedError

    def send_command(self, command: bytes) -> None:
        raise NotImplementedError

    def ask(self, command: str) -> str:
        """Send a command; its reply (room messages meanwhile are kept in order)."""
        self.send_command(command.encode())
        while True:
            data = self.recv()
            if data.startswith(b"r:"):
                return data[2:].decode()
            self.room_messages.append(data)

    def messages(self, count: int) -> list[bytes]:
        """The first `count` room messages (waiting for those not here yet)."""
        while len(self.room_messages) < count:
            data = self.recv()
            assert not data.startswith(b"r:"), data
            self.room_messages.append(data)
        return self.room_messages[:count]

    def who(self, room: str) -> dict[str, dict[str, str]]:
        reply = self.ask(f"who {room}")
        assert reply.startswith("who:"), reply
        members: dict[str, dict[str, str]] = json.loads(reply[4:])
        return members


class Client(CommandPeer):
    """The command protocol over a websockets client."""

    def __init__(self, url: str) -> None:
        self._cm = ws_connect(url, open_timeout=deadline(5))
        self.ws: ClientConnection = self._cm.__enter__()
        self.room_messages = []

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def recv(self) -> bytes:
        data = self.ws.recv(timeout=deadline(10))
        assert isinstance(data, bytes)
        return data

    def send_command(self, command: bytes) -> None:
        self.ws.send(command)


def wait_for(check: Callable[[], bool], seconds: float = 10, what: str = "not in time") -> None:
    """Poll `check` until it holds; fail with `what` after deadline(seconds)."""
    end = time.monotonic() + deadline(seconds)
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.02)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest) -> DriverHarness:
    return DRIVERS[request.param]()


@pytest.fixture
def servers(driver: DriverHarness) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(**options: Any) -> RunningServer:
        server = driver.start_server(flow_for(driver), close_timeout=2, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def clients() -> Iterator[Callable[[str], Client]]:
    made: list[Client] = []

    def connect(url: str) -> Client:
        client = Client(url)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def engine_urls(request: pytest.FixtureRequest) -> list[str]:
    """One server's engine URL ("memory://"), or two sharing one Redis."""
    if request.param == "memory":
        return ["memory://"]
    url: str = request.getfixturevalue("redis_url")
    return [url, url]


# -- the tests ------------------------------------------------------------------------


def test_one_order_presence_and_skip_across_servers(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    engine_urls: list[str],
) -> None:
    running = [servers(engine=url) for url in engine_urls]
    players = [clients(running[i % len(running)].url) for i in range(4)]
    for index, player in enumerate(players):
        assert player.ask(f"join match p{index}") == "joined"
    names = {f"p{i}" for i in range(4)}
    # Presence is cluster-wide (each server's own joins are applied before it asks).
    wait_for(lambda: {m["name"] for m in players[0].who("match").values()} == names)
    everyone = players[-1].who("match")
    assert len(everyone) == 4 and {m["name"] for m in everyone.values()} == names

    for index, player in enumerate(players):
        for n in range(3):
            reply = player.ask(f"say match {index}-{n}")
            assert reply == f"count:{4 // len(running)}"  # the local members it reaches
    seen = [player.messages(12) for player in players]
    assert all(sequence == seen[0] for sequence in seen), "players disagree on the order"
    assert sorted(seen[0]) == sorted(f"b:{i}-{n}".encode() for i in range(4) for n in range(3))
    for index in range(4):  # each sender's messages keep its own order
        own = [m for m in seen[0] if m.startswith(f"b:{index}-".encode())]
        assert own == [f"b:{index}-{n}".encode() for n in range(3)]

    # skip= crosses servers: only the sender misses a shout.
    for player in players:
        player.room_messages.clear()
    players[0].ask("shout match not for the sender")
    for player in players[1:]:
        assert player.messages(1) == [b"b:not for the sender"]
    players[1].ask("say match after")  # (ordered after the shout: everyone had it)
    assert players[0].messages(1) == [b"b:after"]  # the shout never reached it
    for player in players[1:]:
        assert player.messages(2) == [b"b:not for the sender", b"b:after"]

    # publish is confirmed with its position in the room's one order.
    first = int(players[2].ask("pub match p").removeprefix("pos:"))
    second = int(players[3].ask("pub match q").removeprefix("pos:"))
    assert second == first + 1

    # A member that leaves, or whose connection ends, leaves presence.
    players[1].ask("leave match")
    players[2].close()
    wait_for(lambda: {m["name"] for m in players[0].who("match").values()} == {"p0", "p3"})


BURST = 150


def test_bursts_from_many_members_keep_one_order_across_servers(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    engine_urls: list[str],
) -> None:
    """Broadcasts queued faster than the store confirms them (sent to Redis in
    pipelined batches; threaded: many threads blocking at once) still arrive whole,
    in one order, everywhere."""
    running = [servers(engine=url) for url in engine_urls]
    players = [clients(running[i % len(running)].url) for i in range(4)]
    for index, player in enumerate(players):
        player.ask(f"join burst p{index}")
    wait_for(lambda: len(players[0].who("burst")) == 4)
    for index, player in enumerate(players):  # all at once: no waiting for replies
        player.ws.send(f"burst burst {index}:{BURST}".encode())
    expected = 4 * BURST
    seen = []
    for player in players:
        got: list[bytes] = []
        while len(got) < expected:
            data = player.recv()
            if not data.startswith(b"r:"):
                got.append(data)
        seen.append(got)
    assert all(sequence == seen[0] for sequence in seen), "players disagree on the order"
    for index in range(4):
        own = [m for m in seen[0] if m.startswith(f"b:{index}:".encode())]
        assert own == [f"b:{index}:{n}".encode() for n in range(BURST)]


def test_join_then_broadcast_in_one_handler_reaches_the_new_member(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    engine_urls: list[str],
) -> None:
    server = servers(engine=engine_urls[0])
    engine = server.server.engine  # type: ignore[attr-defined]
    assert isinstance(engine, LocalEngine if engine_urls[0] == "memory://" else RedisEngine)
    client = clients(server.url)
    # A room this server has no member in yet: the join subscribes it first.
    assert client.ask("joinsay fresh hello") == "count:1"
    assert client.messages(1) == [b"b:hello"]


def test_without_an_engine_publish_and_presence_are_local(
    servers: Callable[..., RunningServer], clients: Callable[[str], Client]
) -> None:
    server = servers()
    assert server.server.engine is None  # type: ignore[attr-defined]
    a, b = clients(server.url), clients(server.url)
    a.ask("join lobby ada")
    b.ask("join lobby")
    assert a.ask("pub lobby one") == "pos:1"
    assert b.ask("pub lobby two") == "pos:2"
    assert a.messages(2) == b.messages(2) == [b"b:one", b"b:two"]
    assert sorted(m.get("name", "") for m in a.who("lobby").values()) == ["", "ada"]


class RefusingEngine(LocalEngine):
    """An in-process engine whose store refuses publications that contain b"refuse"
    (as Redis refuses a command when out of memory)."""

    async def publish(self, room: str, data: bytes) -> StreamPosition:
        if b"refuse" in data:
            raise EngineError("refused: out of memory")
        return await super().publish(room, data)


def test_a_queued_publication_that_fails_is_reported_never_silent(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    driver: DriverHarness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[ObservedEvent] = []
    lock = threading.Lock()

    def on_event(event: ObservedEvent) -> None:
        with lock:
            events.append(event)

    server = servers(engine=RefusingEngine(), on_event=on_event)
    client = clients(server.url)
    client.ask("join r")
    with caplog.at_level(logging.ERROR, logger="socker"):
        reply = client.ask("say r refuse this")
        if driver.name == "threaded":  # blocking: the caller gets the error itself
            assert reply == "error:refused: out of memory"
        else:  # queued: reported on on_event and in the log
            assert reply == "count:1"
            client.ask("say r later")  # in order after the failed one
            assert client.messages(1) == [b"b:later"]
            with lock:
                failed = [e for e in events if isinstance(e, PublishFailed)]
            assert [(e.room, e.size) for e in failed] == [("r", len(b"b:refuse this"))]
            assert isinstance(failed[0].error, EngineError)
            assert any("was not published" in r.getMessage() for r in caplog.records)
        # publish() raises to its caller on every driver.
        assert client.ask("pub r refuse again") == "error:refused: out of memory"


def test_a_redis_outage_raises_keeps_connections_and_recovers(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    own_redis: RedisServer,
) -> None:
    engine = RedisEngine(own_redis.url, timeout=1.0, reconnect_delay=(0.02, 0.2))
    server = servers(engine=engine)
    a, b = clients(server.url), clients(server.url)
    a.ask("join r")
    b.ask("join r")
    assert a.ask("say r before") == "count:2"
    assert b.messages(1) == [b"b:before"]

    own_redis.stop()
    # While Redis is down: broadcast raises at once (once the engine knows), publish
    # raises, and the connections stay up (they keep answering).
    wait_for(
        lambda: a.ask("say r during") == "unavailable", what="broadcast never reported the outage"
    )
    assert a.ask("pub r during") == "unavailable"
    assert b.ask("who r") == "unavailable"
    # A member joining during the outage: its join waits for the engine (retried in
    # order), while publish and presence keep answering "unavailable" at once.
    late = clients(server.url)
    assert late.ask("join later") == "joined"
    assert late.ask("pub later x") == "unavailable"
    assert late.ask("who later") == "unavailable"

    own_redis.start()
    # Redis lost everything: the members cannot be brought up to date, so by default
    # they are closed with 4414 (never a silent gap).
    for client in (a, b):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4414
        assert closed.value.rcvd.reason == "room state lost: reconnect and resync"
    # The late join reached the engine once Redis was back: the member is in presence
    # and receives the room's publications.
    wait_for(lambda: late.ask("who later") != "unavailable")
    assert list(late.who("later")) and late.ask("pub later hi").startswith("pos:")
    assert late.messages(1) == [b"b:hi"]
    # The service recovered by itself: a new client joins and broadcasts.
    c = clients(server.url)
    c.ask("join r")
    wait_for(lambda: c.ask("say r again") == "count:1")
    assert b"b:again" in c.messages(1)


def test_stopping_a_server_leaves_presence_and_closes_its_engine(
    servers: Callable[..., RunningServer],
    clients: Callable[[str], Client],
    redis_url: str,
) -> None:
    engine = RedisEngine(redis_url)
    server = servers(engine=engine)
    client = clients(server.url)
    client.ask("join r ada")
    client.ask("join other")
    assert [m["name"] for m in client.who("r").values()] == ["ada"]
    # The worker is subscribed to exactly the rooms it has members in.
    assert engine.subscribed_rooms == {"r", "other"}
    client.ask("leave other")
    client.who("other")  # (after this server's queued leave reached the engine)
    assert engine.subscribed_rooms == {"r"}
    server.stop()
    assert engine.subscribed_rooms == frozenset()
    assert not engine.available  # exited: no client left
    with BlockingEngine(RedisEngine(redis_url)) as observer:
        assert observer.presence("r") == {}
