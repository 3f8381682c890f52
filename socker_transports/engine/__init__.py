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


#: Engine options a URL may carry as query parameters, and how each is read.
_URL_OPTIONS: dict[str, Any] = {
    "prefix": str,
    "history_size": int,
    "history_ttl": float,
    "meta_ttl": float,
    "presence_ttl": float,
    "presence_heartbeat": float,
    "timeout": float,
}


def _url_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split the engine's own options off a URL's query (`?presence_ttl=5`); the
    rest of the query (`db=0` on a unix socket) stays for the client."""
    from urllib.parse import parse_qsl, urlencode

    base, mark, query = url.partition("?")
    if not mark:
        return url, {}
    options: dict[str, Any] = {}
    kept = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        kind = _URL_OPTIONS.get(key)
        if kind is None:
            kept.append((key, value))
            continue
        try:
            options[key] = kind(value)
        except ValueError:
            raise ValueError(
                f"engine URL option {key}={value!r}: not a valid {kind.__name__}"
            ) from None
    return (f"{base}?{urlencode(kept)}" if kept else base), options


def open_engine(url: str | None = None, **options: Any) -> Engine:
    """The engine a URL names: None or "memory://" -> `LocalEngine`; "redis://",
    "rediss://" or "unix://" -> `RedisEngine` (needs the `redis` extra). `options` go
    to the engine's constructor; a Redis URL may carry them as query parameters too
    (`redis://127.0.0.1:6379/0?presence_ttl=5&history_size=500`: prefix,
    history_size, history_ttl, meta_ttl, presence_ttl, presence_heartbeat, timeout),
    which is how `socker serve --engine` sets them. Enter the result with
    `async with` (a server given `engine=` does that itself)."""
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
        url, from_url = _url_options(url)
        return RedisEngine(url, **{**from_url, **options})
    raise ValueError(f"unknown engine URL {url!r}: expected memory:// or redis://HOST:PORT/DB")
