"""An engine for threads: the threaded driver (and any code without an event loop)
calls the same engine through a blocking portal.

    with BlockingEngine(RedisEngine(url)) as engine:
        engine.set_receiver(on_event)          # runs on the portal's thread
        engine.join("match-1", conn.id, {"name": "ada"})
        engine.publish("match-1", b"hello")

The wrapped engine runs on its own event loop in one background thread (asyncio by
default; any anyio backend); every method blocks the calling thread until done and is
safe from any number of threads. The receiver runs on the portal's thread: hand events
on without blocking (the threaded server's broadcast is thread-safe).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .events import FetchResult, StreamPosition
from .interface import Engine, MemberInfo, Receiver, documented_by_engine


@documented_by_engine
class BlockingEngine:
    """Blocking calls into an `Engine` running on a background event loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self._backend = backend
        self._backend_options = backend_options
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._engine_cm: AbstractContextManager[Any] | None = None

    def __enter__(self) -> BlockingEngine:
        portal_cm = start_blocking_portal(self._backend, self._backend_options)
        portal = portal_cm.__enter__()
        try:
            engine_cm = portal.wrap_async_context_manager(self.engine)
            engine_cm.__enter__()
        except BaseException as exc:
            portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._portal_cm, self._portal, self._engine_cm = portal_cm, portal, engine_cm
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        engine_cm, portal_cm = self._engine_cm, self._portal_cm
        self._engine_cm = self._portal_cm = self._portal = None
        try:
            if engine_cm is not None:
                engine_cm.__exit__(exc_type, exc, tb)
        finally:
            if portal_cm is not None:
                portal_cm.__exit__(None, None, None)

    def _call(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("use `with BlockingEngine(...)` first")
        return self._portal

    @property
    def available(self) -> bool:
        """The wrapped engine's `available` (True for an engine without one)."""
        return bool(getattr(self.engine, "available", True))

    def set_receiver(self, receiver: Receiver | None) -> None:
        self.engine.set_receiver(receiver)

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        # Read on the engine's own thread: its state changes there.
        return self._call().call(lambda: self.engine.subscribed_rooms)

    def publish(self, room: str, data: bytes) -> StreamPosition:
        return self._call().call(self.engine.publish, room, data)

    def join(self, room: str, member: str, info: MemberInfo | None = None) -> StreamPosition:
        return self._call().call(self.engine.join, room, member, info)

    def leave(self, room: str, member: str) -> None:
        self._call().call(self.engine.leave, room, member)

    def presence(self, room: str) -> dict[str, dict[str, str]]:
        return self._call().call(self.engine.presence, room)

    def position(self, room: str) -> StreamPosition:
        return self._call().call(self.engine.position, room)

    def fetch_since(self, room: str, since: StreamPosition) -> FetchResult:
        return self._call().call(self.engine.fetch_since, room, since)

    def put_session(self, key: str, data: bytes, ttl: float) -> None:
        self._call().call(self.engine.put_session, key, data, ttl)

    def take_session(self, key: str) -> bytes | None:
        return self._call().call(self.engine.take_session, key)

    def drop_session(self, key: str) -> None:
        self._call().call(self.engine.drop_session, key)
