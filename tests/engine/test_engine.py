"""The engine interface's promises, on both engines (in-process and real Redis),
on asyncio, uvloop and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from socker_transports.engine import (
    Engine,
    LocalEngine,
    Publication,
    Recovered,
    RoomEvent,
    StreamPosition,
    Unrecoverable,
    open_engine,
)
from socker_transports.engine.redis_engine import RedisEngine
from tests.engine.conftest import RedisServer
from tests.timing import deadline

pytestmark = pytest.mark.anyio

MakeEngine = Callable[..., Any]


@pytest.fixture(params=["local", "redis"])
def make_engine(request: pytest.FixtureRequest) -> MakeEngine:
    if request.param == "local":
        return LocalEngine
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return lambda **options: RedisEngine(server.url, **options)


class Inbox:
    """A receiver that lets a test wait for a number of events."""

    def __init__(self) -> None:
        self.events: list[RoomEvent] = []

    def __call__(self, event: RoomEvent) -> None:
        self.events.append(event)

    async def wait_for(self, count: int, seconds: float = 5) -> list[RoomEvent]:
        with anyio.fail_after(deadline(seconds)):
            while len(self.events) < count:
                await anyio.sleep(0.005)
        return self.events

    def data(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, Publication)]


@asynccontextmanager
async def running(engine: Any) -> AsyncIterator[tuple[Engine, Inbox]]:
    inbox = Inbox()
    async with engine as started:
        started.set_receiver(inbox)
        yield started, inbox


async def test_open_engine_picks_by_url(redis_url: str) -> None:
    assert isinstance(open_engine(None), LocalEngine)
    assert isinstance(open_engine("memory://"), LocalEngine)
    assert isinstance(open_engine(redis_url), RedisEngine)
    with pytest.raises(ValueError):
        open_engine("mongodb://nope")


async def test_publish_numbers_each_room_from_one_in_order(make_engine: MakeEngine) -> None:
    async with running(make_engine()) as (engine, inbox):
        start = await engine.join("a", "m1")
        assert start.offset == 0
        positions = [await engine.publish("a", f"a{i}".encode()) for i in range(20)]
        other = await engine.publish("b", b"b0")
        assert [p.offset for p in positions] == list(range(1, 21))
        assert len({p.epoch for p in positions}) == 1
        assert other.offset == 1  # rooms are numbered independently
        events = await inbox.wait_for(20)
        assert [(e.room, e.offset, e.data) for e in events if isinstance(e, Publication)] == [
            ("a", i + 1, f"a{i}".encode()) for i in range(20)
        ]
        assert await engine.position("a") == positions[-1]


async def test_payloads_are_bytes_kept_exactly(make_engine: MakeEngine) -> None:
    payloads = [b"", b"1:abc:", b"\x00\xff:\r\n", bytes(range(256)) * 8]
    async with running(make_engine()) as (engine, inbox):
        await engine.join("bin", "m")
        for payload in payloads:
            await engine.publish("bin", payload)
        await inbox.wait_for(len(payloads))
        assert inbox.data() == payloads
        history = await engine.fetch_since("bin", StreamPosition(0, inbox.events[0].position.epoch))
        assert isinstance(history, Recovered)
        assert [p.data for p in history.publications] == payloads


async def test_only_rooms_with_local_members_are_subscribed(make_engine: MakeEngine) -> None:
    async with running(make_engine()) as (engine, inbox):
        assert engine.subscribed_rooms == frozenset()
        await engine.join("lobby", "m1")
        await engine.join("lobby", "m2")
        assert engine.subscribed_rooms == {"lobby"}
        await engine.publish("elsewhere", b"not for us")
        await engine.publish("lobby", b"for us")
        await inbox.wait_for(1)
        await engine.leave("lobby", "m1")
        assert engine.subscribed_rooms == {"lobby"}  # m2 is still there
        await engine.leave("lobby", "m2")
        assert engine.subscribed_rooms == frozenset()
        await engine.publish("lobby", b"after the last member left")
        await engine.join("barrier", "m3")
        await engine.publish("barrier", b"barrier")
        await inbox.wait_for(2)
        assert inbox.data() == [b"for us", b"barrier"]


async def test_presence_lists_members_with_their_info(make_engine: MakeEngine) -> None:
    async with running(make_engine()) as (engine, _):
        await engine.join("match", "c1", {"name": "ada"})
        await engine.join("match", "c2", {"name": "bob", "team": "red"})
        assert await engine.presence("match") == {
            "c1": {"name": "ada"},
            "c2": {"name": "bob", "team": "red"},
        }
        await engine.join("match", "c1", {"name": "ada", "ready": "yes"})  # update
        await engine.leave("match", "c2")
        await engine.leave("match", "nobody")  # no-op
        assert await engine.presence("match") == {"c1": {"name": "ada", "ready": "yes"}}
        assert await engine.presence("empty") == {}
        with pytest.raises(TypeError):
            await engine.join("match", "c3", {"score": 3})  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            await engine.join("match", "c3", {"bio": "x" * 2000})
        assert set(await engine.presence("match")) == {"c1"}
        assert engine.subscribed_rooms == {"match"}


async def test_history_is_bounded_and_backfills_since_a_position(make_engine: MakeEngine) -> None:
    async with running(make_engine(history_size=5)) as (engine, _):
        positions = [await engine.publish("h", f"m{i}".encode()) for i in range(1, 11)]
        epoch = positions[0].epoch
        result = await engine.fetch_since("h", StreamPosition(6, epoch))
        assert isinstance(result, Recovered)
        assert [(p.offset, p.data) for p in result.publications] == [
            (i, f"m{i}".encode()) for i in range(7, 11)
        ]
        assert result.position == StreamPosition(10, epoch)
        # 6..10 are the five kept: since 5 is still complete, since 4 is not.
        whole = await engine.fetch_since("h", StreamPosition(5, epoch))
        assert isinstance(whole, Recovered)
        assert [p.offset for p in whole.publications] == [6, 7, 8, 9, 10]
        trimmed = await engine.fetch_since("h", StreamPosition(4, epoch))
        assert trimmed == Unrecoverable("h", "trimmed", StreamPosition(10, epoch))
        assert await engine.fetch_since("h", StreamPosition(10, epoch)) == Recovered(
            (), StreamPosition(10, epoch)
        )


async def test_a_position_from_another_numbering_is_unrecoverable(
    make_engine: MakeEngine,
) -> None:
    async with running(make_engine()) as (engine, _):
        now = await engine.publish("x", b"1")
        other_epoch = await engine.fetch_since("x", StreamPosition(1, "another-epoch"))
        assert other_epoch == Unrecoverable("x", "epoch-changed", now)
        ahead = await engine.fetch_since("x", StreamPosition(7, now.epoch))
        assert ahead == Unrecoverable("x", "unknown-position", now)


async def test_a_session_is_taken_once_and_expires(make_engine: MakeEngine) -> None:
    async with running(make_engine()) as (engine, _):
        await engine.put_session("token-1", b"\x00step=3", ttl=30)
        assert await engine.take_session("token-1") == b"\x00step=3"
        assert await engine.take_session("token-1") is None  # single use
        await engine.put_session("token-2", b"old", ttl=30)
        await engine.put_session("token-2", b"new", ttl=30)  # replaced
        await engine.drop_session("token-2")
        assert await engine.take_session("token-2") is None
        await engine.drop_session("never-there")
        await engine.put_session("short", b"x", ttl=0.2)
        await anyio.sleep(deadline(0.2) + 0.3)
        assert await engine.take_session("short") is None
