"""The engine behind rooms, broadcast, presence and resume, for one or many processes.

- `LocalEngine`: in-process, the default (nothing to install or start).
- `RedisEngine`: many worker processes and machines sharing one Redis (the `redis`
  extra); asyncio, uvloop and trio.
- `BlockingEngine`: either one, from threads.
- `open_engine(url)`: `None`/`"memory://"` -> LocalEngine, `"redis://..."` -> RedisEngine.

The interface and its promises: interface.py. The values: events.py.
"""

from __future__ import annotations

from typing import Any

from .blocking import BlockingEngine
from .cursor import Arrival, RoomCursor
from .errors import EngineClosed, EngineError, EngineUnavailable
from .events import (
    FetchResult,
    Publication,
    Recovered,
    Resync,
    ResyncReason,
    RoomEvent,
    StreamPosition,
    Unrecoverable,
)
from .interface import Engine, MemberInfo, Receiver
from .local import LocalEngine
from .presence_info import MAX_INFO_BYTES

__all__ = [
    "MAX_INFO_BYTES",
    "Arrival",
    "BlockingEngine",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineUnavailable",
    "FetchResult",
    "LocalEngine",
    "MemberInfo",
    "Publication",
    "Receiver",
    "Recovered",
    "Resync",
    "ResyncReason",
    "RoomCursor",
    "RoomEvent",
    "StreamPosition",
    "Unrecoverable",
    "open_engine",
]


def open_engine(url: str | None = None, **options: Any) -> Engine:
    """The engine a URL names: None or "memory://" -> `LocalEngine`; "redis://",
    "rediss://" or "unix://" -> `RedisEngine` (needs the `redis` extra). `options` go
    to the engine's constructor. Enter the result with `async with`."""
    if url is None or url == "memory://":
        return LocalEngine(**options)
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis_engine import RedisEngine
        except ImportError as exc:  # coredis is the optional `redis` extra
            raise ImportError(
                f"the Redis engine needs the redis extra (pip install 'socker-steps[redis]'): {exc}"
            ) from None
        return RedisEngine(url, **options)
    raise ValueError(f"unknown engine URL {url!r}: expected memory:// or redis://HOST:PORT/DB")
