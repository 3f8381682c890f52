"""The engine interface: what rooms, broadcast, presence and resume need from a store
that may span processes and machines.

One engine per worker process. The worker's connections are *members*; a room's
publications reach the worker through one receiver (`set_receiver`) when, and only
while, the worker has at least one member in that room (`join` subscribes the worker
on its first member, `leave` unsubscribes it after its last). The receiver then fans
each publication out to the local members (e.g. with the server's local broadcast).

Promises every engine keeps:

- One total order per room: publications get consecutive offsets 1, 2, 3, ... in one
  epoch, and every worker's receiver sees them in that order.
- No silent gap: for each room the receiver gets every publication after the worker
  joined, in order, or a `Resync` saying which room lost what and from which position
  delivery goes on.
- `publish` returns the publication's position once the store has it; it raises
  `EngineUnavailable` when the store cannot be reached.
- Presence: `join(room, member, info)` makes the member visible cluster-wide with its
  small `info` mapping until `leave`, or until its worker stops refreshing it (killed):
  then it disappears within the engine's documented `presence_ttl`.
- History: the last `history_size` publications of a room (kept `history_ttl` seconds)
  can be fetched again with `fetch_since`, which says `Unrecoverable` rather than
  returning an incomplete sequence.
- Sessions: `put_session(key, data, ttl)` keeps an opaque snapshot that any worker
  can `take_session(key)` exactly once (atomic: one taker wins) until `ttl` expires.

Optionally an engine has an `available` property: False while it knows its store is
unreachable (a server's `broadcast(room=)` then raises EngineUnavailable at once
rather than queueing); an engine without one counts as always available. And
optionally `async publish_many([(room, data), ...]) -> [StreamPosition | EngineError]`:
several publications in order in one round trip (a server's queue sends consecutive
publications that way when the engine has it; RedisEngine does, with a pipeline).

Used as `async with engine:` (it may run background tasks: the subscription reader,
the presence heartbeat) on any anyio backend; threads use `BlockingEngine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from .events import FetchResult, RoomEvent, StreamPosition

#: Called on the engine's event loop, in each room's order, for each publication or
#: resync of the rooms this worker is subscribed to. It must not block: hand the event
#: on (a local broadcast queues frames and returns).
Receiver = Callable[[RoomEvent], None]

#: A member's presence information: small, flat, string to string.
MemberInfo = Mapping[str, str]


@runtime_checkable
class Engine(Protocol):
    """Rooms, presence and history for one worker (see the module's promises)."""

    async def __aenter__(self) -> Engine: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def set_receiver(self, receiver: Receiver | None) -> None:
        """Where this worker's room events go (None: dropped, the default)."""

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        """The rooms this worker is subscribed to: exactly those with local members."""

    async def publish(self, room: str, data: bytes) -> StreamPosition:
        """Append `data` to the room's stream and deliver it to every subscribed
        worker; returns its position once the store has it."""

    async def join(self, room: str, member: str, info: MemberInfo | None = None) -> StreamPosition:
        """Make `member` (a connection id on this worker) a member of `room`, visible
        in `presence` with `info`; subscribes this worker to the room on its first
        local member. Returns the room's position at the join: the member receives
        every publication after it. Joining again updates `info` (str -> str, at
        most `presence_info.MAX_INFO_BYTES` as JSON: TypeError/ValueError otherwise).
        Raises EngineUnavailable, and leaves no trace on this worker, when the store
        is unreachable."""

    async def leave(self, room: str, member: str) -> None:
        """Remove `member` from `room` (no-op if absent); unsubscribes this worker
        from the room when its last local member leaves. When the store is
        unreachable the member has still left this worker (nothing refreshes it) and
        EngineUnavailable is raised: it vanishes from presence within the ttl."""

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        """Every live member of `room` on every worker: member id -> its info."""

    async def position(self, room: str) -> StreamPosition:
        """The room's current position (offset of its last publication, and epoch)."""

    async def fetch_since(self, room: str, since: StreamPosition) -> FetchResult:
        """Every publication of `room` after `since`, or `Unrecoverable` when that
        cannot be complete (epoch changed, or history trimmed past `since`)."""

    async def put_session(self, key: str, data: bytes, ttl: float) -> None:
        """Keep `data` (a resumable session's snapshot) under `key` for `ttl` seconds,
        replacing what was there; any worker can take it."""

    async def take_session(self, key: str) -> bytes | None:
        """Remove and return the data under `key` in one atomic step: of any number of
        workers taking the same key at once exactly one gets it (single-use resume
        tokens). None when absent or expired."""

    async def drop_session(self, key: str) -> None:
        """Forget the session under `key` (no-op if absent)."""


_T = TypeVar("_T", bound=type)


def documented_by_engine(cls: _T) -> _T:
    """Give `cls`'s undocumented Engine methods the interface's docstrings (an engine
    keeps the interface's promises: one text of them, here), so `help()` and the API
    pages show them on every engine."""
    documented_properties: dict[str, property] = {}
    for name, value in vars(cls).items():
        interface_member = vars(Engine).get(name)
        if name.startswith("_") or interface_member is None:
            continue
        target = value.fget if isinstance(value, property) else value
        source = (
            interface_member.fget if isinstance(interface_member, property) else interface_member
        )
        if callable(target) and not (target.__doc__ or "").strip() and source.__doc__:
            target.__doc__ = source.__doc__
            if isinstance(value, property):  # a property copies its getter's doc when made
                documented_properties[name] = property(value.fget, value.fset, value.fdel)
    for name, documented in documented_properties.items():
        setattr(cls, name, documented)
    return cls
