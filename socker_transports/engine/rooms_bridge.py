"""Rooms across workers today: connections join rooms on an `Engine`, and each
worker delivers the room's publications to its own members with `conn.send`.

Interim: once the rooms work lands (`conn.join`, `server.broadcast(..., room=)`, the
core registry), the local half of this class (which of this worker's connections are
in which room) is the registry's, and `server.broadcast` goes through `publish` here.
What stays is what this file decides:

- member ids are cluster-wide: `"<node>/<conn.id>"` (a connection id is unique only
  within its process; `node` is unique per worker process);
- `skip` crosses workers inside the publication (an envelope of member ids before the
  payload), so the sender's own worker and every other one skip the same members;
- a `Resync` goes to the `on_resync(event, members)` hook with the local members of
  that room (default: log it): the application tells them to rebuild their state.

Usage, inside one worker's event loop (all anyio backends):

    async with RedisEngine(url) as engine:
        rooms = EngineRooms(engine)
        ...
        await rooms.join(conn, "match-1", {"name": "ada"})   # in a handler or hook
        await rooms.broadcast(b"go", room="match-1", skip=conn)
        await rooms.leave_all(conn)                          # in on_close
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable, Collection, Mapping

from socker_core import Connection, ConnectionClosedError

from .events import Publication, Resync, RoomEvent, StreamPosition
from .interface import Engine, MemberInfo

logger = logging.getLogger("socker.engine")

#: `on_resync(event, members)`: `members` are this worker's connections in the room.
ResyncHook = Callable[[Resync, Mapping[str, Connection]], None]

_NO_SKIP = b"\x00"
_SKIP = 0x01


def node_name() -> str:
    """A name for this worker process, unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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


class EngineRooms:
    """This worker's connections in cluster-wide rooms (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        node: str | None = None,
        on_resync: ResyncHook | None = None,
    ) -> None:
        self.engine = engine
        self.node = node_name() if node is None else node
        self.on_resync = on_resync
        self._members: dict[str, dict[str, Connection]] = {}  # room -> member id -> conn
        engine.set_receiver(self._on_event)

    def member_id(self, conn: Connection) -> str:
        return f"{self.node}/{conn.id}"

    def local_members(self, room: str) -> dict[str, Connection]:
        return dict(self._members.get(room, {}))

    async def join(
        self, conn: Connection, room: str, info: MemberInfo | None = None
    ) -> StreamPosition:
        """`conn` joins `room` cluster-wide (presence shows `info`); it receives every
        broadcast to the room after the returned position."""
        member = self.member_id(conn)
        members = self._members.setdefault(room, {})
        members[member] = conn  # first, so nothing published after the join is missed
        try:
            return await self.engine.join(room, member, info)
        except BaseException:
            members.pop(member, None)
            if not members:
                self._members.pop(room, None)
            raise

    async def leave(self, conn: Connection, room: str) -> None:
        member = self.member_id(conn)
        members = self._members.get(room)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._members[room]
        await self.engine.leave(room, member)

    async def leave_all(self, conn: Connection) -> None:
        """Leave every room (for `on_close`); best effort past the first failure."""
        member = self.member_id(conn)
        rooms = [room for room, members in self._members.items() if member in members]
        failure: BaseException | None = None
        for room in rooms:
            try:
                await self.leave(conn, room)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def broadcast(
        self,
        data: bytes,
        *,
        room: str,
        skip: Connection | Collection[Connection] | None = None,
    ) -> StreamPosition:
        """Send `data` to every member of `room` on every worker, except `skip`;
        returns once the engine has it (EngineUnavailable when it cannot)."""
        if skip is None:
            skipped: list[str] = []
        elif isinstance(skip, Connection):
            skipped = [self.member_id(skip)]
        else:
            skipped = [self.member_id(conn) for conn in skip]
        return await self.engine.publish(room, encode_publication(bytes(data), skipped))

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        return await self.engine.presence(room)

    def _on_event(self, event: RoomEvent) -> None:
        members = self._members.get(event.room)
        if isinstance(event, Resync):
            if self.on_resync is not None:
                self.on_resync(event, dict(members or {}))
            return
        if not members:
            return
        self._deliver(event, members)

    def _deliver(self, event: Publication, members: Mapping[str, Connection]) -> None:
        try:
            skip, data = decode_publication(event.data)
        except ValueError:
            logger.warning("room %r: a publication not made by EngineRooms, ignored", event.room)
            return
        for member, conn in list(members.items()):
            if member in skip:
                continue
            try:
                conn.send(data)
            except ConnectionClosedError:
                continue  # closing: it leaves in its on_close
