"""Cluster rooms: one server's rooms (the core `Registry`) on an `Engine` that every
worker process and machine shares. A server made with `engine=` owns one of these.

- Membership: the registry's listener turns every local `conn.join(room, info)` /
  `conn.leave(room)` (and the leaves of a connection that ends) into an operation on
  one ordered queue; one background task applies them to the engine in call order
  (the member id on the engine is `conn.id`: random, unique across processes).
- Publishing: `broadcast(data, room=R)` queues the publication on the same queue, so
  a handler's `conn.join(R)` followed by a broadcast to R reaches the new member too,
  and returns the number of *local* members it will reach. It raises
  `EngineUnavailable` at once while the engine knows its store is unreachable; a
  queued publication the store then refuses is reported (`PublishFailed` on
  `on_event`, and an error log line), never dropped silently. `publish` waits for the
  store's confirmation and returns the publication's `StreamPosition`. Consecutive
  queued publications go to an engine with `publish_many` as one batch (Redis: one
  pipeline, one round trip, the same order).
- Receiving: the engine's receiver decodes each publication (the skipped member ids
  travel inside it, so every worker skips the same members) and hands it to the
  server's ONE delivery function, `deliver(publication, skip_ids, payload)`: the
  frame is built once and queued on every local member, detached ones included
  (they keep it for their replay), exactly like a local broadcast.
- Gaps: an engine `Resync` for room R goes to `on_resync(event, members)` with the
  local members of R; by default they are closed with 4414 "room state lost:
  reconnect and resync", so each client rebuilds its state. Never silent.

`ClusterRooms` runs on the server's event loop (anyio driver); `BlockingClusterRooms`
(cluster_blocking.py) does the same for the threaded driver, its engine behind a
`BlockingEngine` and its queue applied by one thread of its own.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
from collections import deque
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio

from socker_core import (
    CloseCode,
    Connection,
    LocalProtocolError,
    MemberJoined,
    MembershipEvent,
    Registry,
)

from ..wire.observe import EventHook, PublishFailed
from .errors import EngineClosed, EngineError, EngineUnavailable
from .events import Publication, Resync, RoomEvent, StreamPosition
from .interface import Engine

logger = logging.getLogger("socker.engine")

#: `on_resync(event, members)`: `members` are this worker's connections in the room,
#: in join order. Runs on the engine's loop (threaded: its thread); must not block.
ResyncHook = Callable[[Resync, list[Connection]], None]

#: Told when a member's join reached the engine, with the room's position then
#: (cross-worker resume places a member that has not been sent anything there yet).
JoinedHook = Callable[[Connection, str, StreamPosition], None]

#: The server's delivery function: queue `payload` on every local member of
#: `publication.room` except the ids in `skip_ids`; returns how many it reached.
Deliver = Callable[[Publication, frozenset[str], bytes], int]

ROOM_STATE_LOST_REASON = "room state lost: reconnect and resync"

#: Publications and membership changes waiting for the engine, at most: past it a
#: broadcast raises EngineUnavailable (the store is not keeping up).
MAX_PENDING = 10_000

#: Backoff (seconds) between attempts at a join the store could not take.
_JOIN_RETRY = (0.05, 1.0)

#: How long a stopping server lets queued changes reach the engine.
DRAIN_TIMEOUT = 5.0

#: Consecutive queued publications sent to an engine with `publish_many` (Redis: one
#: pipeline, one round trip, still in order) at most at once.
MAX_BATCH = 64

_NO_SKIP = b"\x00"
_SKIP = 0x01


# -- the publication envelope ---------------------------------------------------------


def encode_publication(data: bytes, skip: Collection[str] = ()) -> bytes:
    """The published bytes: a marker, the skipped member ids, then the payload."""
    if not skip:
        return _NO_SKIP + data
    parts = [struct.pack("!BH", _SKIP, len(skip))]
    for member in skip:
        raw = member.encode()
        parts.append(struct.pack("!H", len(raw)) + raw)
    parts.append(data)
    return b"".join(parts)


def decode_publication(blob: bytes) -> tuple[frozenset[str], bytes]:
    """(skipped member ids, payload); ValueError for bytes not made by encode."""
    if blob[:1] == _NO_SKIP:
        return frozenset(), blob[1:]
    if not blob or blob[0] != _SKIP or len(blob) < 3:
        raise ValueError("not a rooms publication")
    (count,) = struct.unpack_from("!H", blob, 1)
    at = 3
    skip = set()
    for _ in range(count):
        if at + 2 > len(blob):
            raise ValueError("truncated skip list")
        (size,) = struct.unpack_from("!H", blob, at)
        at += 2
        if at + size > len(blob):
            raise ValueError("truncated member id")
        skip.add(blob[at : at + size].decode())
        at += size
    return frozenset(skip), blob[at:]


def skip_ids(skip: Connection | Collection[Connection] | None) -> list[str]:
    if skip is None:
        return []
    if isinstance(skip, Connection):
        return [skip.id]
    return [conn.id for conn in skip]


def close_members(event: Resync, members: list[Connection]) -> None:
    """The default `on_resync`: close every local member of the room with 4414."""
    for conn in members:
        conn.close(CloseCode.ROOM_STATE_LOST, ROOM_STATE_LOST_REASON)  # no-op once closing


def resolve_engine(engine: str | Engine | None) -> Engine | None:
    """What a server's `engine=` names: None, an `Engine`, or a URL (`open_engine`)."""
    if engine is None or not isinstance(engine, str):
        return engine
    from . import open_engine

    return open_engine(engine)


class LocalNumbering:
    """`server.publish` without an engine: a StreamPosition per room in this process's
    own numbering (one epoch per server), so code reads the same either way."""

    __slots__ = ("_offsets", "epoch")

    def __init__(self) -> None:
        self.epoch = "local-" + secrets.token_hex(6)
        self._offsets: dict[str, int] = {}

    def next(self, room: str) -> StreamPosition:
        offset = self._offsets.get(room, 0) + 1
        self._offsets[room] = offset
        return StreamPosition(offset, self.epoch)


# -- the queue's operations -----------------------------------------------------------


class _Waiter:
    """Where a caller waits for its operation: `settle` once, from the applier."""

    __slots__ = ("error", "result")

    def __init__(self) -> None:
        self.result: StreamPosition | None = None
        self.error: BaseException | None = None

    def settle(self, result: StreamPosition | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._wake()

    def _wake(self) -> None:
        raise NotImplementedError


class _AsyncWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = anyio.Event()

    def _wake(self) -> None:
        self.event.set()


class _ThreadWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def _wake(self) -> None:
        self.event.set()


class _Join:
    __slots__ = ("conn", "info", "room")

    def __init__(self, conn: Connection, room: str, info: dict[str, str]) -> None:
        self.conn, self.room, self.info = conn, room, info


class _Leave:
    __slots__ = ("conn", "room")

    def __init__(self, conn: Connection, room: str) -> None:
        self.conn, self.room = conn, room


class _Publish:
    __slots__ = ("blob", "room", "size", "waiter")

    def __init__(self, room: str, blob: bytes, size: int, waiter: _Waiter | None) -> None:
        self.room, self.blob, self.size, self.waiter = room, blob, size, waiter


class _Barrier:
    """Settled once every operation queued before it has been applied."""

    __slots__ = ("waiter",)

    def __init__(self, waiter: _Waiter) -> None:
        self.waiter = waiter


_Op = _Join | _Leave | _Publish | _Barrier


# -- what both drivers share ----------------------------------------------------------


class _Bridge:
    """The queue, the receiver and the resync handling; subclasses apply the queue."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        deliver: Deliver,
        *,
        on_resync: ResyncHook | None = None,
        on_event: EventHook | None = None,
        log: logging.Logger | None = None,
        max_pending: int = MAX_PENDING,
        drain_timeout: float = DRAIN_TIMEOUT,
        on_joined: JoinedHook | None = None,
    ) -> None:
        self.engine = engine
        self.drain_timeout = drain_timeout
        self.on_joined = on_joined
        self.registry = registry
        self.deliver = deliver
        self.on_resync = on_resync
        self.on_event = on_event
        self.log = log if log is not None else logger
        self.max_pending = max_pending
        self._ops: deque[_Op] = deque()
        self._closed = False
        #: What a Resync does without an `on_resync` (a driver may close its own way).
        self.default_resync: ResyncHook = close_members
        self._init_driver()

    def _init_driver(self) -> None:
        """The driver's own state (one constructor for both, so their options agree)."""

    # -- the registry's side --------------------------------------------------------

    def _bind(self, engine: Any) -> None:
        if self.registry.listener is not None:
            raise RuntimeError("this registry already follows an engine")
        engine.set_receiver(self._receive)
        self.registry.listener = self._on_membership

    def _unbind(self, engine: Any) -> None:
        if self.registry.listener == self._on_membership:
            self.registry.listener = None
        engine.set_receiver(None)

    def _on_membership(self, event: MembershipEvent) -> None:
        # Inside the registry's guard: changes queue in the order they happened.
        if isinstance(event, MemberJoined):
            self._enqueue(_Join(event.conn, event.room, dict(event.info)))
        else:
            self._enqueue(_Leave(event.conn, event.room))

    def _enqueue(self, op: _Op) -> None:
        raise NotImplementedError

    def _publication(
        self,
        data: bytes,
        room: str,
        skip: Connection | Collection[Connection] | None,
        waiter: _Waiter | None,
    ) -> _Publish:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"broadcast() takes bytes, got {type(data).__name__}")
        if not isinstance(room, str) or not room:
            raise LocalProtocolError(f"a room name is a non-empty string, got {room!r}")
        if self._closed:
            raise EngineClosed("the server's engine is closed")
        if len(self._ops) >= self.max_pending:
            raise EngineUnavailable(
                f"{len(self._ops)} publications and room changes wait for the engine already"
            )
        payload = bytes(data)
        return _Publish(room, encode_publication(payload, skip_ids(skip)), len(payload), waiter)

    @property
    def available(self) -> bool:
        """False while the engine knows its store is unreachable."""
        raise NotImplementedError

    def _refuse_if_down(self) -> None:
        # While the engine knows the store is down, refuse at once rather than queue
        # behind work that cannot be done (a join being retried, say).
        if not self.available:
            raise EngineUnavailable("the engine's store is unreachable")

    def local_count(self, room: str, skip: Connection | Collection[Connection] | None) -> int:
        """How many local members a broadcast to `room` will reach (as things stand)."""
        return len(self.registry.recipients(room, skip))

    # -- the engine's side ------------------------------------------------------------

    def _receive(self, event: RoomEvent) -> None:
        if isinstance(event, Resync):
            self._resync(event)
            return
        try:
            skip, payload = decode_publication(event.data)
        except ValueError:
            self.log.warning("room %r: a publication not made by socker, ignored", event.room)
            return
        self.deliver(event, skip, payload)

    def _resync(self, event: Resync) -> None:
        members = self.registry.recipients(event.room)
        if not members:
            return
        self.log.warning(
            "room %r: %d local member(s) must resync (%s)", event.room, len(members), event.reason
        )
        hook = self.on_resync if self.on_resync is not None else self.default_resync
        try:
            hook(event, members)
        except Exception:
            self.log.exception("on_resync raised for %r", event)

    def _failed(self, op: _Publish, error: BaseException) -> None:
        """A queued publication the store did not confirm: to its waiter, or reported."""
        if op.waiter is not None:
            op.waiter.settle(None, error)
            return
        self.log.error(
            "room %r: a broadcast of %d bytes was not published: %s", op.room, op.size, error
        )
        hook = self.on_event
        if hook is not None:
            try:
                hook(PublishFailed("server", op.room, op.size, error))
            except Exception:
                self.log.exception("on_event hook raised for PublishFailed")

    def _batch(self) -> list[_Publish]:
        """The consecutive publications at the head of the queue (at most MAX_BATCH)."""
        batch: list[_Publish] = []
        for op in self._ops:
            if not isinstance(op, _Publish) or len(batch) == MAX_BATCH:
                break
            batch.append(op)
        return batch

    def _settle_batch(self, batch: list[_Publish], results: Any) -> None:
        """Each publication's outcome: its position, or its error (or the whole
        batch's, when `results` is an exception)."""
        if isinstance(results, BaseException):
            for op in batch:
                self._failed(op, results)
            return
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, StreamPosition):
                if op.waiter is not None:
                    op.waiter.settle(result, None)
            else:
                self._failed(op, result)

    def _member(self, op: _Join) -> bool:
        """Whether a join that failed is still wanted (the connection is in the room)."""
        return self.registry.info(op.conn, op.room) is not None

    def _abandon(self) -> None:
        """The engine is stopping: whatever is still queued will not reach it."""
        self._closed = True
        while self._ops:
            op = self._ops.popleft()
            if isinstance(op, _Publish):
                self._failed(op, EngineClosed("the server stopped before it was published"))
            elif isinstance(op, _Barrier):
                op.waiter.settle(None, EngineClosed("the server's engine is closed"))


# -- the anyio driver's ---------------------------------------------------------------


class ClusterRooms(_Bridge):
    """A server's rooms on `engine` (see the module docstring), on its event loop.
    `async with` enters the engine, binds it to the registry and runs the queue; on
    exit, queued changes get `drain_timeout` seconds to reach the engine, then the
    engine is exited."""

    def _init_driver(self) -> None:
        self._waiting: anyio.Event | None = None  # set when the queue gets work
        self._stack: AsyncExitStack | None = None

    @property
    def available(self) -> bool:
        """False while the engine knows its store is unreachable."""
        return bool(getattr(self.engine, "available", True))

    async def __aenter__(self) -> ClusterRooms:
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(self.engine)
            self._bind(self.engine)
            stack.callback(self._unbind, self.engine)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the group is exited
            tg.start_soon(self._apply_queue)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            with anyio.move_on_after(self.drain_timeout, shield=True):
                await self._barrier()
        except EngineError:
            pass
        finally:
            try:
                await stack.aclose()
            finally:
                self._abandon()

    def _enqueue(self, op: _Op) -> None:
        if self._closed:
            return  # stopped: publications and barriers raised EngineClosed already
        self._ops.append(op)
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            waiting.set()

    def broadcast(
        self, data: bytes, room: str, skip: Connection | Collection[Connection] | None
    ) -> int:
        """Queue a publication to `room` cluster-wide; the local members it will reach."""
        self._refuse_if_down()
        self._enqueue(self._publication(data, room, skip, None))
        return self.local_count(room, skip)

    async def publish(
        self, data: bytes, room: str, skip: Connection | Collection[Connection] | None
    ) -> StreamPosition:
        """Publish to `room` cluster-wide, in order with the queue; returns once the
        store has it (EngineUnavailable when it cannot)."""
        self._refuse_if_down()
        waiter = _AsyncWaiter()
        self._enqueue(self._publication(data, room, skip, waiter))
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        """Every member of `room` cluster-wide, after this worker's queued changes."""
        self._refuse_if_down()
        await self._barrier()
        return await self.engine.presence(room)

    async def settled(self) -> None:
        """Return once every join, leave and publication queued before has reached
        the engine (EngineClosed once the engine is closed)."""
        await self._barrier()

    async def _barrier(self) -> None:
        if self._closed:
            raise EngineClosed("the server's engine is closed")
        waiter = _AsyncWaiter()
        self._enqueue(_Barrier(waiter))
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    async def _apply_queue(self) -> None:
        ops = self._ops
        publish_many = getattr(self.engine, "publish_many", None)
        while True:
            while not ops:
                self._waiting = waiting = anyio.Event()
                await waiting.wait()
            batch = self._batch() if publish_many is not None else []
            if publish_many is not None and len(batch) > 1:
                try:
                    results: Any = await publish_many([(op.room, op.blob) for op in batch])
                except Exception as exc:
                    results = exc
                self._settle_batch(batch, results)
                for _ in batch:
                    ops.popleft()
                continue
            await self._apply(ops[0])
            ops.popleft()

    async def _apply(self, op: _Op) -> None:
        engine = self.engine
        if isinstance(op, _Publish):
            try:
                position = await engine.publish(op.room, op.blob)
            except Exception as exc:
                self._failed(op, exc)
            else:
                if op.waiter is not None:
                    op.waiter.settle(position, None)
        elif isinstance(op, _Join):
            delay = _JOIN_RETRY[0]
            while True:
                try:
                    position = await engine.join(op.room, op.conn.id, op.info)
                    if self.on_joined is not None:
                        self.on_joined(op.conn, op.room, position)
                    return
                except EngineUnavailable as exc:
                    if not self._member(op):
                        return  # it left meanwhile: nothing to join
                    level = logging.WARNING if delay == _JOIN_RETRY[0] else logging.DEBUG
                    self.log.log(level, "room %r: join retried in %.2fs: %s", op.room, delay, exc)
                except Exception:
                    self.log.exception("room %r: the engine refused a join", op.room)
                    return
                await anyio.sleep(delay)
                delay = min(_JOIN_RETRY[1], delay * 2)
        elif isinstance(op, _Leave):
            try:
                await engine.leave(op.room, op.conn.id)
            except EngineUnavailable as exc:  # it expires from presence by the ttl
                self.log.warning("room %r: leave not confirmed: %s", op.room, exc)
            except Exception:
                self.log.exception("room %r: the engine refused a leave", op.room)
        else:
            op.waiter.settle(None, None)


__all__ = [
    "DRAIN_TIMEOUT",
    "MAX_PENDING",
    "ROOM_STATE_LOST_REASON",
    "ClusterRooms",
    "Deliver",
    "LocalNumbering",
    "ResyncHook",
    "close_members",
    "decode_publication",
    "encode_publication",
    "resolve_engine",
]
