"""Registry: connections by id, room membership, and who receives a broadcast. Pure.

The registry *decides*; it moves no bytes. Drivers ask it who the recipients of a
broadcast are (`recipients`) and deliver the frame themselves (built once, queued
on every recipient's wire). Embedded without a driver, `Registry.broadcast`
delivers through each recipient's Stepper: the message lands in its outbox and its
`wakeup` fires, the same path as a `conn.send` made outside a call.

This class is also the engine surface: the methods a rooms engine implements
(the in-process one is this class; a Redis engine, later, behind the same calls):

- presence: `add(conn)`, `discard(conn)`, `get(id)`, `connections`;
- membership changes: `join(conn, room, info=None)`, `leave(conn, room)`, `rooms_of(conn)`;
- queries: `room(name)`, `rooms`, `members(room)` (with each member's info), `info(conn, room)`;
- the decision of a broadcast: `recipients(room=None, skip=None)`.

Membership listener: `registry.listener`, when set, is called with a `MemberJoined` or
`MemberLeft` event for every change of membership, in the order the changes happen
(inside the registry's guard, so threads cannot reorder them): a join (or a re-join
with a new `info`), a leave, and one `MemberLeft` per room, in join order, when a
connection is discarded. A cluster engine follows the local rooms through it. The
listener must not block or raise (it queues the change and returns).

`info` is the member's presence information: a small flat mapping of str to str
(at most `MAX_INFO_BYTES` as compact JSON), kept with the membership.

A Stepper attached to a registry (`Stepper(flow, registry=...)`) is added when it
opens and discarded as soon as it stops being open (its close starts, or the
transport ends), before its `on_close` hooks run: every member of every room is an
open connection, and a connection's rooms are empty once it ends.

No threads here: a driver that calls the registry from several threads sets
`guard` (a lock), which every call holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from ._errors import ConnectionClosedError, LocalProtocolError
from ._stepper import Connection

_NO_GUARD: AbstractContextManager[Any] = nullcontext()


#: The largest presence info a member may carry, as compact JSON: presence is read
#: whole (and, with a cluster engine, by every worker), so it must stay small.
MAX_INFO_BYTES = 1024

#: A member without info (shared: never mutated).
_NO_INFO: Mapping[str, str] = {}


def _check_room(room: object) -> str:
    if not isinstance(room, str) or not room:
        raise LocalProtocolError(f"a room name is a non-empty string, got {room!r}")
    return room


def check_info(info: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of a member's presence info; TypeError for a non-mapping or non-string
    keys or values, ValueError when over MAX_INFO_BYTES as compact JSON. One check
    for the core's rooms and every engine."""
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise TypeError(f"presence info is a mapping of str to str, got {type(info).__name__}")
    checked: dict[str, str] = {}
    for key, value in info.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"presence info maps str to str, got {key!r}: {value!r}")
        checked[key] = value
    if checked:
        size = len(info_json(checked).encode())
        if size > MAX_INFO_BYTES:
            raise ValueError(f"presence info is {size} bytes, over {MAX_INFO_BYTES}")
    return checked


def info_json(info: Mapping[str, str]) -> str:
    """The canonical form of an info: compact, key-sorted JSON."""
    return json.dumps(dict(info), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """`conn` joined `room` (or joined again with a different `info`)."""

    conn: Connection
    room: str
    info: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """`conn` left `room` (by `leave`, or because it stopped being open)."""

    conn: Connection
    room: str


MembershipEvent = MemberJoined | MemberLeft

#: `Registry.listener`: told every membership change, in order; must not block.
MembershipListener = Callable[[MembershipEvent], None]


class Registry:
    """The open connections of one server and the rooms they are in (see the module
    docstring). Iteration orders are insertion orders, so a broadcast reaches its
    recipients in the order they joined: deterministic, like the rest of the core."""

    __slots__ = ("_by_id", "_joined", "_members", "guard", "listener")

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        # room -> its members (in join order) and each one's info; only rooms with members.
        self._members: dict[str, dict[Connection, Mapping[str, str]]] = {}
        # connection -> the rooms it is in; only connections in at least one room.
        self._joined: dict[Connection, dict[str, None]] = {}
        #: A context manager (a driver's lock) every call holds; None: no threads.
        self.guard: AbstractContextManager[Any] | None = None
        #: Told every membership change (see the module docstring); None: nobody.
        self.listener: MembershipListener | None = None

    def _lock(self) -> AbstractContextManager[Any]:
        guard = self.guard
        return _NO_GUARD if guard is None else guard

    # -- presence ------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        """`conn` is open: reachable by id and by broadcasts (a Stepper does this
        itself when it opens)."""
        with self._lock():
            known = self._by_id.get(conn.id)
            if known is not None and known is not conn:
                raise LocalProtocolError(f"another open connection has id {conn.id!r}")
            self._by_id[conn.id] = conn

    def discard(self, conn: Connection) -> None:
        """`conn` is no longer open: it leaves every room (a no-op if unknown)."""
        with self._lock():
            if self._by_id.get(conn.id) is conn:
                del self._by_id[conn.id]
            rooms = self._joined.pop(conn, None)
            if rooms:
                members = self._members
                for name in rooms:
                    room = members[name]
                    del room[conn]
                    if not room:
                        del members[name]
                listener = self.listener
                if listener is not None:
                    for name in rooms:
                        listener(MemberLeft(conn, name))

    def get(self, id: str) -> Connection | None:
        """The open connection with this id, or None."""
        return self._by_id.get(id)

    @property
    def connections(self) -> frozenset[Connection]:
        """Every open connection."""
        with self._lock():
            return frozenset(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, conn: object) -> bool:
        id = getattr(conn, "id", None)
        return isinstance(id, str) and self._by_id.get(id) is conn

    # -- membership ----------------------------------------------------------

    def join(self, conn: Connection, room: str, info: Mapping[str, str] | None = None) -> None:
        """Put `conn` in `room` with its presence `info` (see `check_info`). Joining
        again is a no-op, or updates the info when a different `info` is given.
        ConnectionClosedError if `conn` is not open (closing, closed, or never added)."""
        _check_room(room)
        checked = _NO_INFO if info is None else check_info(info)
        with self._lock():
            if self._by_id.get(conn.id) is not conn:
                raise ConnectionClosedError(
                    f"cannot join {room!r}: the connection is not open",
                    conn.close_code,
                    conn.close_reason,
                )
            members = self._members.get(room)
            if members is None:
                members = self._members[room] = {}
            known = members.get(conn)
            if known is not None and (info is None or known == checked):
                return  # already in, nothing new
            members[conn] = checked
            joined = self._joined.get(conn)
            if joined is None:
                joined = self._joined[conn] = {}
            joined[room] = None
            listener = self.listener
            if listener is not None:
                listener(MemberJoined(conn, room, checked))

    def leave(self, conn: Connection, room: str) -> None:
        """Take `conn` out of `room` (a no-op if it is not in it)."""
        _check_room(room)
        with self._lock():
            joined = self._joined.get(conn)
            if joined is None or room not in joined:
                return
            del joined[room]
            if not joined:
                del self._joined[conn]
            members = self._members[room]
            del members[conn]
            if not members:
                del self._members[room]
            listener = self.listener
            if listener is not None:
                listener(MemberLeft(conn, room))

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The rooms `conn` is in."""
        with self._lock():
            joined = self._joined.get(conn)
            return frozenset() if joined is None else frozenset(joined)

    # -- queries -------------------------------------------------------------

    def room(self, name: str) -> frozenset[Connection]:
        """The open connections in room `name` (empty for a room nobody is in)."""
        with self._lock():
            members = self._members.get(name)
            return frozenset() if members is None else frozenset(members)

    @property
    def rooms(self) -> frozenset[str]:
        """The names of the rooms that have members."""
        with self._lock():
            return frozenset(self._members)

    def members(self, room: str) -> dict[Connection, dict[str, str]]:
        """The members of `room`, in join order, each with (a copy of) its info."""
        with self._lock():
            members = self._members.get(room)
            return {} if members is None else {c: dict(i) for c, i in members.items()}

    def info(self, conn: Connection, room: str) -> dict[str, str] | None:
        """`conn`'s info in `room` (a copy; {} when it joined without one), or None
        when it is not a member."""
        with self._lock():
            members = self._members.get(room)
            known = None if members is None else members.get(conn)
            return None if known is None else dict(known)

    # -- broadcast -----------------------------------------------------------

    def recipients(
        self,
        room: str | None = None,
        skip: Connection | Collection[Connection] | None = None,
    ) -> list[Connection]:
        """Who a broadcast goes to: every open connection (or every member of
        `room`), in the order they were added (or joined), except `skip` (one
        connection or a collection of them). A snapshot: later changes do not
        affect it."""
        if room is not None:
            _check_room(room)
        with self._lock():
            if room is None:
                pool: Collection[Connection] = self._by_id.values()
            else:
                members = self._members.get(room)
                if members is None:
                    return []
                pool = members
            if skip is None:
                return list(pool)
            if isinstance(skip, Connection):
                return [conn for conn in pool if conn is not skip]
            skipped = skip if isinstance(skip, (set, frozenset, dict)) else set(skip)
            return [conn for conn in pool if conn not in skipped]

    def broadcast(
        self,
        data: bytes,
        *,
        room: str | None = None,
        skip: Connection | Collection[Connection] | None = None,
    ) -> int:
        """Send `data` to every recipient (see `recipients`) through its Stepper;
        returns how many it was queued for. A recipient that stopped being open
        meanwhile is skipped: nothing raises into the caller for it.

        This is the embedded delivery; a driver's `Server.broadcast` asks
        `recipients` and queues one prebuilt frame on each wire instead."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"broadcast() takes bytes, got {type(data).__name__}")
        payload = bytes(data)
        count = 0
        for conn in self.recipients(room, skip):
            try:
                conn.send(payload)
            except ConnectionClosedError:
                continue
            count += 1
        return count

    def __repr__(self) -> str:
        return f"<Registry connections={len(self._by_id)} rooms={len(self._members)}>"
