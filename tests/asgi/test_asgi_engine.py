"""The cluster engine under ASGI, with a real Redis (tests/engine/conftest.py) and
socker clients: uvicorn processes sharing one Redis deliver a room in one order
across them (two processes, and `--workers 2`); the engine's lifetime when the App
gets lifespan (entered at startup, a store that is down fails the startup) and when
it does not (mounted in Starlette or FastAPI: entered once by the first
connections, 503 while the store is down, recovering by itself); EngineUnavailable
and 4414 through an outage, as on the native servers."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from socker_core import Connection, Flow
from socker_transports.asgi import App
from socker_transports.engine import BlockingEngine, EngineClosed, LocalEngine
from socker_transports.engine.redis_engine import RedisEngine
from socker_transports.wire import HandshakeError
from tests.asgi.apps import starlette_app
from tests.asgi.harness_asgi import STACKS
from tests.asgi.room_peers import Peer, anyio_flow, asgi_servers, peers, run_on, wait_for
from tests.asgi.servers import UvicornThread
from tests.asgi.test_asgi_app import FakeServer, until
from tests.engine.conftest import RedisServer, own_redis, redis_server, redis_url
from tests.timing import deadline

__all__ = ["asgi_servers", "own_redis", "peers", "redis_server", "redis_url"]

ROOT = Path(__file__).resolve().parents[2]

#: The stacks the Redis tests cross: uvicorn on asyncio, and hypercorn on trio (where
#: the App holds its engine in a trio system task).
ENGINE_STACKS = ["asgi-fastapi-uvicorn", "asgi-starlette-hypercorn-trio"]
assert set(ENGINE_STACKS) <= set(STACKS)


def names(members: dict[str, dict[str, str]]) -> set[str]:
    return {info["name"] for info in members.values()}


def http_get(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline(5))
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def free_port() -> int:
    import benchmarks.redis_server

    return benchmarks.redis_server.free_port()


class UvicornProcess:
    """`python -m uvicorn tests.asgi.engine_app:app` on 127.0.0.1 (lifespan on)."""

    def __init__(self, engine_url: str, workers: int = 1) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        command = [sys.executable, "-m", "uvicorn", "tests.asgi.engine_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        command += ["--timeout-graceful-shutdown", "3"]
        if workers > 1:
            command += ["--workers", str(workers)]
        env = {**os.environ, "SOCKER_TEST_ENGINE": engine_url, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def wait_up(self) -> None:
        """Until every worker answered "engine:up" (each GET is a new connection,
        handed to one worker or another: a worker still starting gets none, and a
        test that needs both would see only the first)."""
        end = time.monotonic() + deadline(20)
        up: set[str] = set()
        while True:
            assert self.process.poll() is None, f"uvicorn exited: {self.output()}"
            try:
                answer = http_get(self.port)
                if answer.startswith("engine:up"):
                    up.add(answer.rpartition("pid:")[2])
                    if len(up) >= self.workers:
                        return
            except OSError:
                pass
            assert time.monotonic() < end, f"uvicorn did not start ({len(up)} workers up)"
            time.sleep(0.05)

    def output(self) -> str:
        try:
            out, _ = self.process.communicate(timeout=deadline(10))
        except subprocess.TimeoutExpired:
            return "(still running)"
        return out.decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # lifespan shutdown: App.shutdown()
            try:
                self.process.wait(timeout=deadline(20))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=deadline(10))
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def uvicorns() -> Iterator[Callable[..., UvicornProcess]]:
    started: list[UvicornProcess] = []

    def start(engine_url: str, workers: int = 1, wait: bool = True) -> UvicornProcess:
        server = UvicornProcess(engine_url, workers)
        started.append(server)
        if wait:
            server.wait_up()
        return server

    yield start
    for server in started:
        server.stop()


def worker_peer(make: Callable[[str], Peer], url: str) -> tuple[Peer, int]:
    peer = make(url)
    hello = peer.recv()
    assert hello.startswith(b"r:pid:"), hello
    return peer, int(hello[6:])


# -- uvicorn processes on one Redis ---------------------------------------------------


def test_two_uvicorn_processes_on_one_redis_keep_one_order(
    uvicorns: Callable[..., UvicornProcess], peers: Callable[[str], Peer], redis_url: str
) -> None:
    servers = [uvicorns(redis_url), uvicorns(redis_url)]  # each entered at lifespan startup
    players = [worker_peer(peers, servers[i % 2].url) for i in range(4)]
    assert len({pid for _, pid in players}) == 2
    members = [peer for peer, _ in players]
    for index, peer in enumerate(members):
        assert peer.ask(f"join match p{index}") == "joined"
    wanted = {f"p{i}" for i in range(4)}
    wait_for(lambda: names(members[0].who("match")) == wanted)
    assert names(members[1].who("match")) == wanted  # presence is cluster-wide

    for index, peer in enumerate(members):
        for n in range(5):
            assert peer.ask(f"say match {index}-{n}") == "count:2"  # its worker's members
    seen = [peer.messages(20) for peer in members]
    assert all(sequence == seen[0] for sequence in seen), "the workers disagree on the order"
    assert sorted(seen[0]) == sorted(f"b:{i}-{n}".encode() for i in range(4) for n in range(5))
    for index in range(4):
        own = [m for m in seen[0] if m.startswith(f"b:{index}-".encode())]
        assert own == [f"b:{index}-{n}".encode() for n in range(5)]

    # skip= crosses processes; publish is confirmed in the room's one order.
    for peer in members:
        peer.room_messages.clear()
    assert members[0].ask("shout match psst") == "count:1"
    for peer in members[1:]:
        assert peer.messages(1) == [b"b:psst"]
    members[1].ask("say match after")  # (ordered after the shout: everyone had it)
    assert members[0].messages(1) == [b"b:after"]  # the shout never reached it
    for peer in members[1:]:
        assert peer.messages(2) == [b"b:psst", b"b:after"]
    first = int(members[2].ask("pub match a").removeprefix("pos:"))
    second = int(members[3].ask("pub match b").removeprefix("pos:"))
    assert second == first + 1

    # A worker that stops (SIGTERM: lifespan shutdown) takes its members out of
    # presence: the App drained their leaves into Redis before exiting the engine.
    # (Bounded below the 15 s presence ttl even at SOCKER_TEST_TIME_FACTOR=4: leaves
    # that never reached Redis would only expire after it.)
    servers[1].stop()
    # uvicorn re-raises the SIGTERM it handled once it shut down gracefully.
    assert servers[1].process.returncode in (0, -signal.SIGTERM), servers[1].output()
    wait_for(lambda: names(members[0].who("match")) == {"p0", "p2"}, seconds=3)


def test_uvicorn_workers_2_on_one_redis_broadcast_across_workers(
    uvicorns: Callable[..., UvicornProcess], peers: Callable[[str], Peer], redis_url: str
) -> None:
    server = uvicorns(redis_url, workers=2)
    by_worker: dict[int, list[Peer]] = {}
    for _ in range(60):  # the kernel hands each connection to one worker or the other
        peer, pid = worker_peer(peers, server.url)
        by_worker.setdefault(pid, []).append(peer)
        if len(by_worker) == 2 and all(len(found) >= 2 for found in by_worker.values()):
            break
    assert len(by_worker) == 2, f"every connection went to one worker: {list(by_worker)}"
    members = [peer for found in by_worker.values() for peer in found[:2]]
    for index, peer in enumerate(members):
        assert peer.ask(f"join lobby m{index}") == "joined"
    wait_for(lambda: len(members[0].who("lobby")) == 4)
    for n in range(10):
        members[n % 4].ask(f"say lobby {n}")
    seen = [peer.messages(10) for peer in members]
    assert all(sequence == seen[0] for sequence in seen)
    assert sorted(seen[0]) == sorted(f"b:{n}".encode() for n in range(10))


def test_a_store_that_is_down_fails_the_lifespan_startup(
    uvicorns: Callable[..., UvicornProcess], own_redis: RedisServer
) -> None:
    own_redis.stop()
    server = uvicorns(own_redis.url, wait=False)
    try:
        server.process.wait(timeout=deadline(30))
    except subprocess.TimeoutExpired:
        pytest.fail("uvicorn kept running with its engine's store down")
    output = server.output()
    assert server.process.returncode != 0
    assert "engine" in output.lower() or "redis" in output.lower(), output


# -- mounted: no lifespan reaches the App ---------------------------------------------


class CountingRedisEngine(RedisEngine):
    """A RedisEngine that counts how often it was entered."""

    entries = 0

    async def __aenter__(self) -> RedisEngine:
        self.entries += 1
        return await super().__aenter__()


class UvicornLifespanThread(UvicornThread):
    """uvicorn with lifespan on: Starlette takes it and does not forward it."""

    kind = "uvicorn-lifespan"

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = uvicorn.Config(self.asgi_app, lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.loop.call_soon(self._watch_started)
        await self.server.serve(sockets=[self.sock])


def test_mounted_in_starlette_the_first_connections_enter_the_engine_once(
    peers: Callable[[str], Peer], redis_url: str
) -> None:
    engine = CountingRedisEngine(redis_url)
    app = App(anyio_flow(), engine=engine, close_timeout=2)
    server = UvicornLifespanThread(starlette_app({"/game": app}), [app]).start()
    try:
        assert engine.entries == 0 and not engine.available  # no lifespan reached it
        made: list[Peer] = []
        errors: list[BaseException] = []

        def join() -> None:
            try:
                made.append(peers(server.url + "/game/"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=join) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(deadline(20))
        assert not errors and len(made) == 6
        assert engine.entries == 1  # the concurrent first connections entered it once
        for index, peer in enumerate(made):
            assert peer.ask(f"join r n{index}") == "joined"
        assert made[0].ask("say r hello") == "count:6"
        assert all(peer.messages(1) == [b"b:hello"] for peer in made)
        assert len(made[5].who("r")) == 6  # presence from Redis: the engine is entered
        run_on(server, app.shutdown)
        assert not engine.available  # exited with the App
        with BlockingEngine(RedisEngine(redis_url)) as observer:
            assert observer.presence("r") == {}  # the leaves reached Redis first
    finally:
        server.stop()


@pytest.mark.parametrize("stack", ENGINE_STACKS)
def test_a_store_down_at_the_first_connection_answers_503_then_recovers(
    stack: str,
    asgi_servers: Callable[..., tuple[App, Any]],
    peers: Callable[[str], Peer],
    own_redis: RedisServer,
) -> None:
    own_redis.stop()
    _app, server = asgi_servers(stack, engine=RedisEngine(own_redis.url, timeout=1.0))
    with pytest.raises(HandshakeError) as refused:
        peers(server.url + "/")
    assert refused.value.result.handshake_status in (503, 403)  # 403: no http.response ext
    own_redis.start()
    peer = peers(server.url + "/")  # the next connection enters the engine
    assert peer.ask("join r ada") == "joined"
    assert names(peer.who("r")) == {"ada"}


@pytest.mark.parametrize("stack", ENGINE_STACKS)
def test_an_outage_raises_engine_unavailable_and_resyncs_with_4414(
    stack: str,
    asgi_servers: Callable[..., tuple[App, Any]],
    peers: Callable[[str], Peer],
    own_redis: RedisServer,
) -> None:
    engine = RedisEngine(own_redis.url, timeout=1.0, reconnect_delay=(0.02, 0.2))
    _app, server = asgi_servers(stack, engine=engine)
    a, b = peers(server.url + "/"), peers(server.url + "/")
    a.ask("join r")
    b.ask("join r")
    assert a.ask("say r before") == "count:2"
    assert b.messages(1) == [b"b:before"]

    own_redis.stop()
    wait_for(
        lambda: a.ask("say r during") == "unavailable", what="broadcast never reported the outage"
    )
    assert a.ask("pub r during") == "unavailable"
    assert b.ask("who r") == "unavailable"

    own_redis.start()
    # Redis lost the room's history: its members are closed with 4414 (never a gap).
    for peer in (a, b):
        with pytest.raises(AssertionError, match="the connection ended"):
            while True:
                peer.recv()
        assert peer.close_code == 4414
    c = peers(server.url + "/")
    c.ask("join r")
    wait_for(lambda: c.ask("say r again") == "count:1")
    assert b"b:again" in c.messages(1)


# -- the entry itself, against an in-memory ASGI server -------------------------------


class GatedEngine(LocalEngine):
    """A LocalEngine whose entry waits for `gate` (a store slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.entries = 0

    async def __aenter__(self) -> LocalEngine:
        self.entries += 1
        await self.gate.wait()
        return await super().__aenter__()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_no_connection_is_accepted_before_the_engine_is_entered(backend: str) -> None:
    async def main() -> None:
        engine = GatedEngine()
        flow = Flow("member")

        @flow.on_open
        def enter(conn: Connection) -> None:
            conn.join("r")

        @flow.step
        def idle(conn: Connection, message: bytes) -> bool:
            return False

        app = App(flow, engine=engine)
        first, second = FakeServer(), FakeServer()
        async with anyio.create_task_group() as tg:
            for server in (first, second):
                tg.start_soon(app, server.scope, server.receive, server.send)
                await server.put({"type": "websocket.connect"})
            await until(lambda: engine.entries == 1)
            await anyio.wait_all_tasks_blocked()
            # Both wait for the one entry: neither is accepted, neither has joined.
            assert first.sent == [] and second.sent == [] and engine.entries == 1
            engine.gate.set()
            await until(lambda: len(app.room("r")) == 2)
            assert [m["type"] for m in first.sent + second.sent] == ["websocket.accept"] * 2
            await app.rooms_settled()
            assert set(await app.presence("r")) == {c.id for c in app.room("r")}
            for server in (first, second):
                await server.put({"type": "websocket.disconnect", "code": 1000})
            await app.shutdown()
        assert engine.entries == 1
        with pytest.raises(EngineClosed):
            await app.presence("r")

    anyio.run(main, backend=backend)
