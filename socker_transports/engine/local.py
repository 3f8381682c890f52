"""The in-process engine: the default, nothing to install or start.

Everything lives in this process: offsets count from 1 in an epoch chosen when the
engine is created, history is a bounded deque per room, presence is a dict (a member
cannot outlive its process, so no expiry is needed), sessions expire on the monotonic
clock. Delivery is synchronous: the receiver runs inside `publish`, before it returns.
Works on any event loop (it awaits nothing) and from threads through `BlockingEngine`.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from types import TracebackType

from .events import FetchResult, Publication, Recovered, StreamPosition, Unrecoverable
from .interface import MemberInfo, Receiver, documented_by_engine
from .presence_info import encode_info

DEFAULT_HISTORY_SIZE = 1000


class _Room:
    __slots__ = ("history", "offset", "presence")

    def __init__(self, history_size: int) -> None:
        self.offset = 0
        self.history: deque[Publication] = deque(maxlen=history_size)
        self.presence: dict[str, dict[str, str]] = {}


@documented_by_engine
class LocalEngine:
    """`Engine` for one process (see interface.py for the promises)."""

    def __init__(self, *, history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        self.history_size = history_size
        self.epoch = secrets.token_hex(8)
        self._rooms: dict[str, _Room] = {}
        self._receiver: Receiver | None = None
        self._sessions: dict[str, tuple[float, bytes]] = {}  # key -> (expires, data)

    async def __aenter__(self) -> LocalEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @property
    def available(self) -> bool:
        """Always True: the store is this process."""
        return True

    def set_receiver(self, receiver: Receiver | None) -> None:
        self._receiver = receiver

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(name for name, room in self._rooms.items() if room.presence)

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = _Room(self.history_size)
        return room

    async def publish(self, room: str, data: bytes) -> StreamPosition:
        state = self._room(room)
        state.offset += 1
        publication = Publication(room, state.offset, self.epoch, bytes(data))
        state.history.append(publication)
        if state.presence and self._receiver is not None:
            self._receiver(publication)
        return publication.position

    async def join(self, room: str, member: str, info: MemberInfo | None = None) -> StreamPosition:
        encode_info(info)  # the same checks as every engine
        state = self._room(room)
        state.presence[member] = dict(info or {})
        return StreamPosition(state.offset, self.epoch)

    async def leave(self, room: str, member: str) -> None:
        state = self._rooms.get(room)
        if state is not None:
            state.presence.pop(member, None)

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        state = self._rooms.get(room)
        return {} if state is None else {m: dict(i) for m, i in state.presence.items()}

    async def position(self, room: str) -> StreamPosition:
        state = self._rooms.get(room)
        return StreamPosition(0 if state is None else state.offset, self.epoch)

    async def fetch_since(self, room: str, since: StreamPosition) -> FetchResult:
        state = self._rooms.get(room)
        top = StreamPosition(0 if state is None else state.offset, self.epoch)
        if since.epoch != self.epoch:
            return Unrecoverable(room, "epoch-changed", top)
        if since.offset > top.offset:
            return Unrecoverable(room, "unknown-position", top)
        if since.offset == top.offset:
            return Recovered((), top)
        assert state is not None
        oldest = state.history[0].offset if state.history else top.offset + 1
        if since.offset + 1 < oldest:
            return Unrecoverable(room, "trimmed", top)
        missed = tuple(p for p in state.history if p.offset > since.offset)
        return Recovered(missed, top)

    async def put_session(self, key: str, data: bytes, ttl: float) -> None:
        now = time.monotonic()
        # Expired sessions are dropped as new ones arrive: the dict stays bounded by
        # the sessions alive within one ttl.
        for stale in [k for k, (expires, _) in self._sessions.items() if expires <= now]:
            del self._sessions[stale]
        self._sessions[key] = (now + ttl, bytes(data))

    async def take_session(self, key: str) -> bytes | None:
        entry = self._sessions.pop(key, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    async def drop_session(self, key: str) -> None:
        self._sessions.pop(key, None)
