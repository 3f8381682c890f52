"""SessionSnapshot: a resumable session as bytes, so another worker can restore it.

`Stepper.snapshot(now)` makes one, `Stepper.restore(flow, snapshot, now, ...)` makes
a detached Stepper from it (see `_handover.py` for what to replay). The bytes
(`to_bytes` / `from_bytes`) are versioned: a worker refuses a format it does not
know (`SnapshotError`) rather than guess.

What a snapshot holds: the flow's name and the route, the connection id (kept
across the resume), the step and the time left before its timeout, the received /
sent / acknowledged counts, the outgoing ledger (direct sends not yet acknowledged,
with their payload; room deliveries as `RoomRef`, whose payload the engine's
history keeps), its tail, the rooms with their presence info and the member's last
position in each, the resume window, and `conn.state` encoded by the flow's
`state_codec` (JSON by default).

Byte layout (version 1): the magic `b"SKSS"`, a version byte, a 4-byte big-endian
length, that many bytes of UTF-8 JSON (the fields; runs of consecutive room
deliveries of one stream are one entry), then the raw blobs the JSON gives the
lengths of: each direct payload in ledger order, then the state.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._errors import LocalProtocolError, SockerError
from ._ledger import RoomRef

#: The current snapshot format.
SNAPSHOT_VERSION = 1
_MAGIC = b"SKSS"
_HEADER = struct.Struct("!4sBI")

#: One ledger entry: the payload of a direct send, or the origin of a room delivery.
LedgerEntry = bytes | RoomRef


class SnapshotError(SockerError):
    """Bytes that are not a snapshot this version of socker can restore (another
    format version, or damaged). A worker answers such a resume with 4410."""


@runtime_checkable
class StateCodec(Protocol):
    """How `conn.state` becomes bytes in a snapshot and back (`Flow(state_codec=...)`).
    `encode` raises (TypeError, ValueError, ...) for a state it cannot encode."""

    def encode(self, state: Any) -> bytes:
        """`state` as bytes (raise for a state this codec cannot encode)."""
        ...

    def decode(self, data: bytes) -> Any:
        """A state equal to the one `encode` was given."""
        ...


class JsonStateCodec:
    """The default codec: the state's attributes (`vars(state)`, or a dict state
    itself) as JSON; decoding makes a fresh state with the flow's factory and sets
    them back. Values must be JSON types (str, numbers, bools, None, lists, dicts
    with str keys): anything else needs a codec of your own. Attributes named in
    `skip` are left out (objects that cannot move between processes: the WebRTC
    steps skip their peer connection, "webrtc")."""

    __slots__ = ("factory", "skip")

    def __init__(self, factory: Callable[[], Any], skip: frozenset[str] = frozenset()) -> None:
        self.factory = factory
        self.skip = frozenset(skip)

    def encode(self, state: Any) -> bytes:
        """JSON of the state's attributes (TypeError/ValueError for non-JSON values)."""
        fields = state if isinstance(state, dict) else vars(state)
        if self.skip:
            fields = {name: value for name, value in fields.items() if name not in self.skip}
        return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        """A fresh state from the flow's factory, with the attributes set back."""
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("a JSON state is an object")
        state = self.factory()
        if isinstance(state, dict):
            state.update(fields)
        else:
            for name, value in fields.items():
                setattr(state, name, value)
        return state


def encode_state(codec: StateCodec, state: Any, flow_name: str) -> bytes:
    """`codec.encode(state)`, or a LocalProtocolError saying why not (at snapshot time,
    in the application's process, where it can be fixed)."""
    try:
        data = codec.encode(state)
    except Exception as exc:
        raise LocalProtocolError(
            f"cannot snapshot flow {flow_name!r}: its conn.state cannot be encoded by "
            f"{type(codec).__name__} ({type(exc).__name__}: {exc}); keep JSON values in "
            "conn.state, or give Flow(state_codec=...) an encode/decode for it"
        ) from exc
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(
            f"cannot snapshot flow {flow_name!r}: {type(codec).__name__}.encode returned "
            f"{type(data).__name__}, not bytes"
        )
    return bytes(data)


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """One resumable session at one moment (see the module docstring)."""

    flow: str
    route: str
    conn_id: str
    step: str
    #: Seconds left before the step's timeout (None: the step has none).
    step_remaining: float | None
    #: Messages received whose turn completed (a message still being handled, or
    #: queued behind it, is not counted: the peer replays it and it is handled again).
    received: int
    sent: int
    acked: int
    #: Messages acked + 1 .. sent, in order.
    ledger: tuple[LedgerEntry, ...]
    #: The origin of message `sent` when it was a room delivery (even if acknowledged).
    tail: RoomRef | None
    #: room -> presence info, in join order.
    rooms: Mapping[str, Mapping[str, str]]
    #: room -> (epoch, offset) of the last publication sent to the member (or where
    #: its membership started).
    positions: Mapping[str, tuple[str, int]]
    #: The resume window (seconds): the store keeps the snapshot that long.
    window: float
    #: `conn.state` as the flow's state_codec encoded it (None: never made).
    state: bytes | None = None
    version: int = field(default=SNAPSHOT_VERSION)

    def __post_init__(self) -> None:
        if self.acked < 0 or self.sent < self.acked or self.received < 0:
            raise SnapshotError("impossible counts in a snapshot")
        if len(self.ledger) != self.sent - self.acked:
            raise SnapshotError("the ledger does not cover messages acked+1..sent")
        if self.ledger:
            last = self.ledger[-1]
            if self.tail != (last if isinstance(last, RoomRef) else None):
                raise SnapshotError("the tail is not the last ledger entry")

    def __repr__(self) -> str:  # payloads and state stay out of logs
        return (
            f"<SessionSnapshot {self.conn_id} flow={self.flow!r} step={self.step!r} "
            f"received={self.received} sent={self.sent} acked={self.acked} "
            f"rooms={sorted(self.rooms)}>"
        )

    # -- bytes -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned encoding (see the module docstring)."""
        blobs: list[bytes] = []
        entries: list[list[Any]] = []
        for entry in self.ledger:
            if isinstance(entry, RoomRef):
                last = entries[-1] if entries else None
                if (
                    last is not None
                    and last[0] == "r"
                    and last[1] == entry.room
                    and last[2] == entry.epoch
                    and last[3] + last[4] == entry.offset
                ):
                    last[4] += 1  # a run of consecutive publications: one entry
                else:
                    entries.append(["r", entry.room, entry.epoch, entry.offset, 1])
            else:
                entries.append(["d", len(entry)])
                blobs.append(entry)
        if self.state is not None:
            blobs.append(self.state)
        tail = self.tail
        meta = {
            "flow": self.flow,
            "route": self.route,
            "id": self.conn_id,
            "step": self.step,
            "remaining": self.step_remaining,
            "received": self.received,
            "sent": self.sent,
            "acked": self.acked,
            "ledger": entries,
            "tail": None if tail is None else [tail.room, tail.epoch, tail.offset],
            "rooms": [[room, dict(info)] for room, info in self.rooms.items()],
            "positions": {room: [e, o] for room, (e, o) in self.positions.items()},
            "window": self.window,
            "state": None if self.state is None else len(self.state),
        }
        encoded = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return b"".join([_HEADER.pack(_MAGIC, self.version, len(encoded)), encoded, *blobs])

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionSnapshot:
        """Decode `to_bytes`' output; SnapshotError for any other bytes."""
        try:
            return _decode(bytes(data))
        except SnapshotError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
            raise SnapshotError(f"not a session snapshot: {exc}") from None


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise SnapshotError(f"{what} is not a count: {value!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"{what} is not a string: {value!r}")
    return value


def _ref(room: object, epoch: object, offset: object) -> RoomRef:
    if _int(offset, "an offset") < 1 or not _str(room, "a room"):
        raise SnapshotError("a room delivery needs a room and an offset >= 1")
    return RoomRef(room, _str(epoch, "an epoch"), offset)  # type: ignore[arg-type]


def _decode(data: bytes) -> SessionSnapshot:
    if len(data) < _HEADER.size:
        raise SnapshotError("too short for a snapshot")
    magic, version, size = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise SnapshotError("not a session snapshot (bad magic)")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"snapshot format {version} is not supported (this socker reads 1)")
    at = _HEADER.size
    meta = json.loads(data[at : at + size].decode("utf-8"))
    if not isinstance(meta, dict):
        raise SnapshotError("snapshot fields are not an object")
    at += size

    def blob(length: object) -> bytes:
        nonlocal at
        n = _int(length, "a blob length")
        if at + n > len(data):
            raise SnapshotError("snapshot truncated")
        chunk = data[at : at + n]
        at += n
        return chunk

    ledger: list[LedgerEntry] = []
    for entry in meta["ledger"]:
        if not isinstance(entry, list) or not entry:
            raise SnapshotError("malformed ledger entry")
        if entry[0] == "d" and len(entry) == 2:
            ledger.append(blob(entry[1]))
        elif entry[0] == "r" and len(entry) == 5:
            first = _ref(entry[1], entry[2], entry[3])
            count = _int(entry[4], "a run length")
            if count < 1:
                raise SnapshotError("empty run in the ledger")
            ledger.extend(RoomRef(first.room, first.epoch, first.offset + i) for i in range(count))
        else:
            raise SnapshotError("malformed ledger entry")
    state_length = meta["state"]
    state = None if state_length is None else blob(state_length)
    if at != len(data):
        raise SnapshotError("trailing bytes after the snapshot")
    tail = meta["tail"]
    remaining = meta["remaining"]
    if remaining is not None and (
        isinstance(remaining, bool) or not isinstance(remaining, (int, float)) or remaining < 0
    ):
        raise SnapshotError("malformed step time left")
    window = meta["window"]
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
        raise SnapshotError("malformed resume window")
    rooms: dict[str, dict[str, str]] = {}
    for room, info in meta["rooms"]:
        if not isinstance(info, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in info.items()
        ):
            raise SnapshotError("malformed presence info")
        rooms[_str(room, "a room")] = info
    positions = {
        _str(room, "a room"): (_str(pair[0], "an epoch"), _int(pair[1], "an offset"))
        for room, pair in meta["positions"].items()
    }
    return SessionSnapshot(
        flow=_str(meta["flow"], "the flow"),
        route=_str(meta["route"], "the route"),
        conn_id=_str(meta["id"], "the connection id"),
        step=_str(meta["step"], "the step"),
        step_remaining=None if remaining is None else float(remaining),
        received=_int(meta["received"], "received"),
        sent=_int(meta["sent"], "sent"),
        acked=_int(meta["acked"], "acked"),
        ledger=tuple(ledger),
        tail=None if tail is None else _ref(*tail),
        rooms=rooms,
        positions=positions,
        window=float(window),
        state=state,
    )


__all__ = [
    "SNAPSHOT_VERSION",
    "JsonStateCodec",
    "LedgerEntry",
    "SessionSnapshot",
    "SnapshotError",
    "StateCodec",
    "encode_state",
]
