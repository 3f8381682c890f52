"""Outgoing data frames, masking, and wsproto's frame-level connection."""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType
from wsproto.connection import Connection as WsprotoConnection

# -- outgoing data frames --------------------------------------------------------------
# Data frames are framed here rather than by wsproto, which copies a payload four
# times on the way out: a bytes payload is queued as is and copied once, when
# `data_to_send` joins the pending chunks (a client's masking is that one copy).

_SMALL_HEADERS = tuple(bytes((0x82, n)) for n in range(126))
_SMALL_MASKED_HEADERS = tuple(bytes((0x82, 0x80 | n)) for n in range(126))
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack
_XOR_TABLES: list[bytes] = []


def _mask(key: bytes, data: bytes) -> bytes:
    """`data` XOR the 4-byte masking `key` (RFC 6455 section 5.3)."""
    n = len(data)
    if n <= 4096:  # big-int XOR: fastest for small payloads
        keys = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little"
        )
    if not _XOR_TABLES:
        _XOR_TABLES.extend(bytes(a ^ b for a in range(256)) for b in range(256))
    masked = bytearray(data)
    for i in range(4):
        masked[i::4] = masked[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(masked)


class _LazyDeque:
    """Stands in for the event deque of a wsproto `Connection`, which costs ~760 bytes
    even empty and which wsproto fills only in `receive_data(None)` (the wire handles
    end of stream itself and never calls it): a real deque is made on first use."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Any] | None = None

    def _real(self) -> deque[Any]:
        if self._items is None:
            self._items = deque()
        return self._items

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real())

    def append(self, item: Any) -> None:
        self._real().append(item)

    def popleft(self) -> Any:
        return self._real().popleft()

    def __getattr__(self, name: str) -> Any:  # any other deque method
        return getattr(self._real(), name)


def _frame_connection(role: ConnectionType, trailing: bytes) -> WsprotoConnection:
    """wsproto's frame-level connection once the handshake is done, fed the bytes that
    followed the head (parsed lazily, like any later read)."""
    ws = WsprotoConnection(role, None, trailing)
    events = getattr(ws, "_events", None)
    if type(events) is deque and not events:
        ws._events = _LazyDeque()  # type: ignore[assignment]
    return ws


def _truncate_reason(reason: str, limit: int = 123) -> str:
    """`reason` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return reason
    return encoded[:limit].decode("utf-8", "ignore")
