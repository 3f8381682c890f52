"""The Redis engine against a real redis-server: two worker processes, one order per
room; presence of a killed process expires; a Redis restart mid-stream is never a silent
gap; and the same engine from a plain thread. On asyncio, uvloop and trio."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from socker_transports.engine import (
    BlockingEngine,
    EngineClosed,
    EngineError,
    EngineUnavailable,
    Publication,
    Resync,
    RoomEvent,
    StreamPosition,
    open_engine,
)
from socker_transports.engine.redis_engine import RedisEngine
from tests.engine.conftest import RedisServer
from tests.engine.test_engine import Inbox
from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]


def peer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.engine_peer", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str], seconds: float) -> str:
    """One stdout line within a deadline (read on a helper thread: no hang)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=deadline(seconds))
    except queue.Empty:
        raise AssertionError("the peer printed nothing in time") from None
    if not line:
        proc.wait(deadline(5))
        assert proc.stderr is not None
        raise AssertionError(f"the peer exited: {proc.stderr.read()}")
    return line


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(deadline(5))
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.parametrize(
    "backends", [("asyncio", "trio"), ("uvloop", "asyncio")], ids=["asyncio+trio", "uvloop+asyncio"]
)
def test_two_worker_processes_see_one_total_order_per_room(
    redis_url: str, backends: tuple[str, str]
) -> None:
    count = 150
    workers = [
        peer("order", redis_url, "match", name, str(count), backend)
        for name, backend in zip(("w1", "w2"), backends, strict=True)
    ]
    try:
        for proc in workers:
            assert read_line(proc, 15).strip() == "ready"
        for proc in workers:  # both publish at once, interleaving in Redis
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        seen = [json.loads(read_line(proc, 40)) for proc in workers]
    finally:
        for proc in workers:
            finish(proc)
    first, second = seen
    assert len(first) == 2 * count
    assert first == second  # the same events, in the same order, on both workers
    assert [offset for offset, _, _ in first] == list(range(1, 2 * count + 1))
    assert len({epoch for _, epoch, _ in first}) == 1
    data = [text for _, _, text in first]
    for name in ("w1", "w2"):  # each publisher's own messages in its own order
        assert [d for d in data if d.startswith(name)] == [f"{name}:{i}" for i in range(count)]


@pytest.mark.anyio
async def test_each_worker_subscribes_only_to_rooms_it_has_members_in(
    redis_server: RedisServer, redis_url: str
) -> None:
    a_inbox, b_inbox = Inbox(), Inbox()
    async with RedisEngine(redis_url) as a, RedisEngine(redis_url) as b:
        a.set_receiver(a_inbox)
        b.set_receiver(b_inbox)
        await a.join("x", "a1")
        await b.join("y", "b1")

        def numsub() -> list[int]:
            """Redis's own count of subscribers of rooms x and y."""
            channels = ("socker:room:x", "socker:room:y")
            reply = bytes(redis_server.command("PUBSUB", "NUMSUB", *channels))
            return [int(line[1:]) for line in reply.split(b"\r\n") if line.startswith(b":")]

        assert numsub() == [1, 1]
        await b.publish("y", b"y-only")
        await a.publish("x", b"x-only")
        await a_inbox.wait_for(1)
        await b_inbox.wait_for(1)
        await b.publish("x", b"x-barrier")  # b publishes to a room it is not in
        await a_inbox.wait_for(2)
        assert a_inbox.data() == [b"x-only", b"x-barrier"]
        assert b_inbox.data() == [b"y-only"]
        await a.leave("x", "a1")
        assert numsub() == [0, 1]


@pytest.mark.anyio
async def test_a_killed_workers_members_leave_presence_within_the_ttl(redis_url: str) -> None:
    ttl = deadline(1.0)  # the heartbeat (ttl/3) must keep up on a loaded machine
    async with RedisEngine(redis_url, presence_ttl=ttl) as engine:
        await engine.join("lobby", "here", {"name": "stays"})
        holder = peer("hold", redis_url, "lobby", "doomed", str(ttl))
        try:
            assert read_line(holder, 15).strip() == "ready"
            present = await engine.presence("lobby")
            assert set(present) == {"here", "doomed"}
            assert present["doomed"]["pid"] == str(holder.pid)
            # Outlives several of its own ttl while it heartbeats.
            await anyio.sleep(ttl * 2)
            assert set(await engine.presence("lobby")) == {"here", "doomed"}
            holder.kill()  # SIGKILL: no leave, no cleanup
            holder.wait(deadline(5))
            killed_at = time.monotonic()
            with anyio.fail_after(deadline(ttl + 3)):
                while "doomed" in await engine.presence("lobby"):
                    await anyio.sleep(0.05)
            gone_after = time.monotonic() - killed_at
        finally:
            finish(holder)
        assert gone_after <= deadline(ttl + 1)
        # Our own member outlived the ttl many times over: the heartbeat keeps it.
        assert await engine.presence("lobby") == {"here": {"name": "stays"}}


@pytest.mark.anyio
async def test_redis_restart_mid_stream_is_never_a_silent_gap(own_redis: RedisServer) -> None:
    url = own_redis.url
    inbox = Inbox()
    confirmed: list[tuple[StreamPosition, bytes]] = []
    options: dict[str, Any] = {
        "timeout": 1.0,
        "reconnect_delay": (0.02, 0.2),
        "presence_ttl": 1.5,
        "presence_heartbeat": 0.2,
    }
    async with RedisEngine(url, **options) as subscriber, RedisEngine(url, **options) as publisher:
        subscriber.set_receiver(inbox)
        await subscriber.join("stream", "s1")
        counter = 0

        async def publish_some(n: int) -> None:
            nonlocal counter
            for _ in range(n):
                counter += 1
                data = f"m{counter}".encode()
                confirmed.append((await publisher.publish("stream", data), data))

        await publish_some(30)
        await inbox.wait_for(30)
        await anyio.to_thread.run_sync(own_redis.stop)
        with pytest.raises(EngineUnavailable):
            await publisher.publish("stream", b"during the outage")
        with pytest.raises(EngineUnavailable):
            await subscriber.presence("stream")
        await anyio.to_thread.run_sync(own_redis.start)
        # The engine recovers by itself: publishing works again without a new engine.
        with anyio.fail_after(deadline(10)):
            while True:
                try:
                    await publish_some(1)
                    break
                except EngineUnavailable:
                    await anyio.sleep(0.05)
        await publish_some(29)
        # Redis came back empty; the heartbeat puts the live member back by itself.
        with anyio.fail_after(deadline(5)):
            while await publisher.presence("stream") != {"s1": {}}:
                await anyio.sleep(0.05)
        # Everything after the restart arrives: the new epoch's history backfills
        # whatever was published before the subscriber had reconnected.
        last = confirmed[-1][0]
        with anyio.fail_after(deadline(10)):
            while not any(isinstance(e, Publication) and e.position == last for e in inbox.events):
                await anyio.sleep(0.01)
    assert_complete_or_resynced(inbox.events, confirmed)
    resyncs = [e for e in inbox.events if isinstance(e, Resync)]
    # Redis lost everything (no persistence): the subscriber must have been told, once.
    assert [r.reason for r in resyncs] == ["epoch-changed"]
    # ... and only the old numbering's tail is lost: the new epoch arrived whole.
    new_epoch = confirmed[-1][0].epoch
    assert [e.data for e in inbox.events if isinstance(e, Publication)][-30:] == [
        data for position, data in confirmed if position.epoch == new_epoch
    ]


def assert_complete_or_resynced(
    events: list[RoomEvent], confirmed: list[tuple[StreamPosition, bytes]]
) -> None:
    """No duplicate, no reordering; every confirmed publication was delivered unless a
    Resync reported the stretch it belongs to."""
    delivered = [(e.position, e.data) for e in events if isinstance(e, Publication)]
    assert len(delivered) == len(set(delivered))
    by_epoch: dict[str, list[int]] = {}
    for position, _ in delivered:
        by_epoch.setdefault(position.epoch, []).append(position.offset)
    for offsets in by_epoch.values():
        assert offsets == sorted(offsets)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # no hole
    resync_at = {e.position.epoch: e.position.offset for e in events if isinstance(e, Resync)}
    got = set(delivered)
    for position, data in confirmed:
        if (position, data) in got:
            continue
        covered = resync_at.get(position.epoch)
        assert covered is not None and position.offset <= covered, (
            f"{position} ({data!r}) was confirmed, never delivered, and no Resync covers it"
        )


@pytest.mark.anyio
async def test_no_redis_at_start_and_use_after_close_are_typed_errors(
    redis_url: str,
) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with pytest.raises(EngineUnavailable):
        async with RedisEngine(dead, timeout=1.0):
            pass
    engine = RedisEngine(redis_url)
    async with engine:
        await engine.publish("r", b"ok")
    with pytest.raises(EngineClosed):
        await engine.publish("r", b"after close")


@pytest.mark.anyio
async def test_an_error_reply_is_an_engine_error(redis_server: RedisServer, redis_url: str) -> None:
    async with RedisEngine(redis_url) as engine:
        # The room's history key holds a string: Redis refuses the XADD.
        assert redis_server.command("SET", "socker:{bad}:history", "x").startswith(b"+OK")
        assert redis_server.command("HSET", "socker:{bad}:meta", "e", "e1", "s", "0")
        with pytest.raises(EngineError) as raised:
            await engine.publish("bad", b"data")
        assert not isinstance(raised.value, EngineUnavailable)
        assert (await engine.position("bad")).offset == 0  # the failed publish left no hole
        assert (await engine.publish("good", b"data")).offset == 1


@pytest.mark.anyio
async def test_the_engine_over_a_unix_socket(unix_redis: RedisServer) -> None:
    assert unix_redis.url.startswith("unix://")
    inbox = Inbox()
    async with open_engine(unix_redis.url) as engine:
        engine.set_receiver(inbox)
        await engine.join("u", "m", {"via": "unix"})
        assert (await engine.publish("u", b"over a socket file")).offset == 1
        await inbox.wait_for(1)
        assert inbox.data() == [b"over a socket file"]
        assert await engine.presence("u") == {"m": {"via": "unix"}}


@pytest.mark.anyio
async def test_a_graceful_stop_removes_its_members_at_once(redis_url: str) -> None:
    async with RedisEngine(redis_url, presence_ttl=60) as watcher:
        async with RedisEngine(redis_url, presence_ttl=60) as leaving:
            await leaving.join("lobby", "bye", {"k": "v"})
            await watcher.join("lobby", "stays")
            assert set(await watcher.presence("lobby")) == {"bye", "stays"}
        assert set(await watcher.presence("lobby")) == {"stays"}  # not after 60 s


@pytest.mark.anyio
async def test_a_foreign_message_on_a_room_channel_is_ignored(
    redis_server: RedisServer, redis_url: str
) -> None:
    inbox = Inbox()
    async with RedisEngine(redis_url) as engine:
        engine.set_receiver(inbox)
        await engine.join("r", "m")
        assert redis_server.command("PUBLISH", "socker:room:r", "garbage").startswith(b":1")
        await engine.publish("r", b"real")
        await inbox.wait_for(1)
        assert inbox.data() == [b"real"]
        assert engine.subscribed_rooms == {"r"}


@pytest.mark.anyio
async def test_join_and_leave_locks_do_not_outlive_their_rooms(redis_url: str) -> None:
    async with RedisEngine(redis_url) as engine:
        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(engine.join, f"match-{index % 4}", f"m{index}")
        assert engine.subscribed_rooms == {f"match-{i}" for i in range(4)}
        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(engine.leave, f"match-{index % 4}", f"m{index}")
        assert engine.subscribed_rooms == frozenset()
        assert engine._room_locks == {}


@pytest.mark.anyio
async def test_of_many_workers_taking_one_session_exactly_one_gets_it(
    redis_server: RedisServer, redis_url: str
) -> None:
    async with RedisEngine(redis_url) as a, RedisEngine(redis_url) as b:
        await a.put_session("secret-token", b"snapshot", ttl=30)
        got: list[bytes | None] = []

        async def take(engine: RedisEngine) -> None:
            got.append(await engine.take_session("secret-token"))

        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(take, (a, b)[index % 2])
        assert sorted(got, key=lambda g: g is None) == [b"snapshot"] + [None] * 9
        # The token itself never appears in Redis's keys.
        await a.put_session("secret-token", b"again", ttl=30)
        assert b"secret-token" not in bytes(redis_server.command("KEYS", "*"))


def test_the_engine_from_a_plain_thread(redis_url: str) -> None:
    """The threaded driver's use: blocking calls, the receiver on the portal thread."""
    events: queue.Queue[RoomEvent] = queue.Queue()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with BlockingEngine(RedisEngine(redis_url)) as engine:
                engine.set_receiver(events.put)
                assert engine.join("t", "m1", {"k": "v"}).offset == 0
                positions = [engine.publish("t", f"{i}".encode()) for i in range(5)]
                assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
                assert engine.presence("t") == {"m1": {"k": "v"}}
                got = [events.get(timeout=deadline(5)) for _ in range(5)]
                assert [e.data for e in got if isinstance(e, Publication)] == [
                    f"{i}".encode() for i in range(5)
                ]
                engine.leave("t", "m1")
                assert engine.subscribed_rooms == frozenset()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(deadline(20))
    assert not thread.is_alive()
    if errors:
        raise errors[0]
