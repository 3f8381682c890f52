"""`RedisEngine.publish_many`: several publications in one round trip, in order, each
with its own outcome (a refused one does not take the others down), and the typed
error when Redis cannot be reached; on asyncio, uvloop and trio."""

from __future__ import annotations

import pytest

from socker_transports.engine import (
    EngineError,
    EngineUnavailable,
    Publication,
    StreamPosition,
)
from socker_transports.engine.redis_engine import RedisEngine
from tests.engine.conftest import RedisServer
from tests.engine.test_engine import Inbox


@pytest.mark.anyio
async def test_a_batch_is_published_in_order_with_each_outcome(
    redis_server: RedisServer, redis_url: str
) -> None:
    # The room "bad"'s history key holds a string: Redis refuses its XADD.
    assert redis_server.command("SET", "socker:{bad}:history", "x").startswith(b"+OK")
    assert redis_server.command("HSET", "socker:{bad}:meta", "e", "e1", "s", "0")
    inbox = Inbox()
    async with RedisEngine(redis_url) as listener, RedisEngine(redis_url) as engine:
        listener.set_receiver(inbox)
        await listener.join("a", "m1")
        await listener.join("b", "m2")
        items = [("a", b"a1"), ("b", b"b1"), ("bad", b"x"), ("a", b"a2"), ("a", b"a3")]
        results = await engine.publish_many(items)
        assert isinstance(results[2], EngineError)
        assert not isinstance(results[2], EngineUnavailable)
        positions = [r for r in results if isinstance(r, StreamPosition)]
        assert [p.offset for p in positions] == [1, 1, 2, 3]
        events = await inbox.wait_for(4)
        assert [(e.room, e.data) for e in events if isinstance(e, Publication)] == [
            ("a", b"a1"),
            ("b", b"b1"),
            ("a", b"a2"),
            ("a", b"a3"),
        ]
        assert await engine.publish_many([]) == []


@pytest.mark.anyio
async def test_a_batch_while_redis_is_down_raises_engine_unavailable(
    own_redis: RedisServer,
) -> None:
    async with RedisEngine(own_redis.url, timeout=1.0, reconnect_delay=(0.02, 0.2)) as engine:
        assert [p.offset for p in await engine.publish_many([("r", b"1"), ("r", b"2")])] == [1, 2]  # type: ignore[union-attr]
        own_redis.stop()
        with pytest.raises(EngineUnavailable):
            await engine.publish_many([("r", b"3")])
        assert not engine.available
        own_redis.start()
