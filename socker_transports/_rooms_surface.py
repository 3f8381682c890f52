"""The rooms surface every server shares: `room`, `rooms`, `broadcast`, `publish`,
`presence`, `rooms_settled` and the engine's delivery hooks, written once.

The anyio `Server`, the threaded `Server` and the ASGI `App` hold the same state for
rooms (the core `Registry`, the cluster bridge when `engine=` is set, the last
position delivered per room) and decide the same things with it: who receives a
broadcast (`wire.prepare_broadcast`), which local members an engine's publication
reaches (`wire.prepare_delivery`), where a joining member starts in the stream.
What differs is only how a driver moves a prepared message to its connections:
each implements `_push`, and the threaded server its blocking `publish` /
`presence` (its engine sits behind a thread of its own).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Protocol, TypeVar

from socker_core import Connection, Registry, RoomRef
from socker_core._stepper import stepper_of

from .engine.cluster import LocalNumbering, ResyncHook, _Bridge
from .engine.events import Publication, StreamPosition
from .engine.interface import Engine
from .wire import prepare_broadcast, prepare_delivery
from .wire.observe import EventHook

Skip = Connection | Collection[Connection] | None
BridgeT = TypeVar("BridgeT", bound=_Bridge)


class _ClusterBroadcast(Protocol):
    def broadcast(self, data: bytes, room: str, skip: Skip) -> int: ...


class _AsyncCluster(_ClusterBroadcast, Protocol):
    async def publish(self, data: bytes, room: str, skip: Skip) -> StreamPosition: ...

    async def presence(self, room: str) -> dict[str, dict[str, str]]: ...

    async def settled(self) -> None: ...


class RoomsSurface:
    """Rooms and broadcast on a server's `registry` (and its cluster, if any).

    A subclass sets `registry`, `log`, `_cluster` (None without an engine, else
    made by `_bridge`) and `_room_positions` ({} at first), and implements `_push`."""

    registry: Registry
    log: logging.Logger
    _cluster: _ClusterBroadcast | None
    _room_positions: dict[str, StreamPosition]

    def room(self, name: str) -> frozenset[Connection]:
        """The open connections in room `name`."""
        return self.registry.room(name)

    @property
    def rooms(self) -> frozenset[str]:
        """The names of the rooms that have members."""
        return self.registry.rooms

    def broadcast(
        self,
        data: bytes,
        *,
        room: str | None = None,
        skip: Connection | Collection[Connection] | None = None,
    ) -> int:
        """Send `data` to every open connection (or every member of `room`) except
        `skip` (a connection or a collection of them); returns how many it was
        queued for. In a handler or not, it never waits for a peer: a connection
        that is closing, or that its send bound drops, is skipped, and nothing
        raises into the caller. The payload is copied once; each recipient gets it
        in the order of the calls. The anyio server and the ASGI App take calls
        from any task on their event loop; the threaded server from any thread (a
        recipient whose thread is idle gets the frame written by the caller at once,
        a busy one from its own thread).

        With an `engine`, `room=` goes cluster-wide: the publication reaches every
        member on every worker in the room's one order, and the count returned is
        of the local members it will reach. On the anyio server and the ASGI App it
        is queued for the engine (in order with this server's joins and leaves);
        a queued publication that fails later is reported (`PublishFailed` on
        `on_event`, an error log line). The threaded server blocks until the store
        has it. EngineUnavailable at once while the engine knows its store is
        unreachable. Without `room=` a broadcast stays on this worker."""
        cluster = self._cluster
        if cluster is not None and room is not None:
            return cluster.broadcast(data, room, skip)
        recipients, payload, frame = prepare_broadcast(self.registry, data, room, skip)
        return self._push(recipients, payload, frame)

    def room_position(self, room: str) -> StreamPosition | None:
        """The last publication of `room` this worker delivered (None: none yet)."""
        return self._room_positions.get(room)

    def _push(
        self,
        recipients: list[Connection],
        payload: bytes,
        frame: bytes,
        origin: RoomRef | None = None,
    ) -> int:
        """Queue `payload` (already framed as `frame`) on each recipient; how many
        took it. The only part of a broadcast that moves bytes: the driver's."""
        raise NotImplementedError

    def _bridge(
        self,
        kind: type[BridgeT],
        engine: Engine,
        on_resync: ResyncHook | None,
        on_event: EventHook | None,
    ) -> BridgeT:
        """This server's rooms on `engine`, through its driver's kind of bridge
        (`ClusterRooms` on an event loop, `BlockingClusterRooms` on threads)."""
        return kind(
            engine,
            self.registry,
            self._deliver,
            on_resync=on_resync,
            on_event=on_event,
            log=self.log,
            on_joined=self._joined,
        )

    def _deliver(self, publication: Publication, skip_ids: frozenset[str], payload: bytes) -> int:
        """The one delivery of an engine's publication to this worker's members of its
        room (but `skip_ids`): the frame built once and pushed like a broadcast's."""
        room = publication.room
        self._room_positions[room] = StreamPosition(publication.offset, publication.epoch)
        recipients, frame = prepare_delivery(self.registry, room, skip_ids, payload)
        if not recipients:
            return 0
        # Tagged with its origin: a resumable member's ledger records it (cross-worker
        # resume replays it from history instead of keeping it).
        origin = RoomRef(room, publication.epoch, publication.offset)
        return self._push(recipients, payload, frame, origin)

    def _joined(self, conn: Connection, room: str, position: StreamPosition) -> None:
        """A member's join reached the engine: this worker delivers `room` from
        `position` on if it had not delivered any of it yet; a resumable member not
        sent anything there yet starts at this worker's place in the stream."""
        cursor = self._room_positions.setdefault(room, position)
        replay = stepper_of(conn).replay
        if replay is not None and replay.ledger is not None and room in conn.rooms:
            # No lock: joined_at is one atomic setdefault (on the threaded server this
            # runs on the engine's queue thread, which a connection thread holding its
            # lock may wait for).
            replay.ledger.joined_at(room, cursor.epoch, cursor.offset)


class AsyncRoomsSurface(RoomsSurface):
    """The rooms surface of a server on an event loop (anyio Server, ASGI App):
    `publish`, `presence` and `rooms_settled` are coroutines on that loop."""

    _cluster: _AsyncCluster | None
    _numbering: LocalNumbering | None = None  # publish() without an engine

    async def publish(
        self,
        data: bytes,
        *,
        room: str,
        skip: Connection | Collection[Connection] | None = None,
    ) -> StreamPosition:
        """Broadcast `data` to `room` and return its position once the store has it
        (with an engine: cluster-wide, EngineUnavailable when the store cannot take
        it; without: a local broadcast, numbered in this server's own sequence)."""
        cluster = self._cluster
        if cluster is not None:
            return await cluster.publish(data, room, skip)
        self.broadcast(data, room=room, skip=skip)
        if self._numbering is None:
            self._numbering = LocalNumbering()
        return self._numbering.next(room)

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        """Who is in `room`: member id (`conn.id`) -> its info (`conn.join(room,
        info)`). With an engine: every worker's members (after this server's own
        queued joins and leaves reached it); without: this server's."""
        cluster = self._cluster
        if cluster is not None:
            return await cluster.presence(room)
        return {conn.id: info for conn, info in self.registry.members(room).items()}

    async def rooms_settled(self) -> None:
        """Every room change queued so far reached the engine (no-op without one)."""
        if self._cluster is not None:
            await self._cluster.settled()
