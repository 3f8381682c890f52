"""XOR masking (RFC 6455 section 5.3) and frame skipping: in C when the optional
`_speedups` extension is built, in Python otherwise.

`SOCKER_NO_SPEEDUPS=1` in the environment (read at import) forces the Python
versions, so the suite can run both; `SPEEDUPS` says which are in use. The two
give the same results (tests/transports/test_masking.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

#: One XOR table per key byte, made on first use by the large-payload path.
_XOR_TABLES: list[bytes] = []

Buffer = bytes | bytearray | memoryview


def _xor_tables() -> list[bytes]:
    if not _XOR_TABLES:
        _XOR_TABLES.extend(bytes(a ^ b for a in range(256)) for b in range(256))
    return _XOR_TABLES


def py_unmask(data: Buffer, start: int, end: int, key: bytes, phase: int) -> bytes:
    """`data[start:end]` XOR the 4-byte `key`, starting at key offset `phase`."""
    if not 0 <= start <= end <= len(data):
        raise ValueError("start/end out of range")
    if len(key) != 4:
        raise ValueError("a masking key is 4 bytes")
    n = end - start
    phase &= 3
    if phase:
        key = key[phase:] + key[:phase]
    if n <= 4096:  # big-int XOR: fastest for small payloads
        keys = (key * ((n >> 2) + 1))[:n]
        chunk = int.from_bytes(data[start:end], "little")
        return (chunk ^ int.from_bytes(keys, "little")).to_bytes(n, "little")
    tables = _xor_tables()
    masked = bytearray(data[start:end])
    for i in range(4):
        masked[i::4] = masked[i::4].translate(tables[key[i]])
    return bytes(masked)


def py_unmask_into(
    target: bytearray, data: Buffer, start: int, end: int, key: bytes, phase: int
) -> None:
    """`py_unmask`, appended to `target`."""
    target += py_unmask(data, start, end, key, phase)


def py_skip_data_frames(data: Buffer, pos: int, client: bool) -> int:
    """The offset of the first frame at or after `pos` that is not a complete,
    well-formed data frame; the payloads of those before it are skipped unread."""
    n = len(data)
    masked = 0 if client else 0x80
    key_size = 0 if client else 4
    while n - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        if (b0 & 0x7F) > 2 or (b1 & 0x80) != masked:
            break  # a control frame, reserved bits, or a masking error: Python decides
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if n - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length <= 125:
                break
            head = 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if length <= 0xFFFF or length >> 63:
                break
            head = 10
        head += key_size
        if n - pos - head < length:
            break
        pos += head + length
    return pos


Unmask = Callable[[Buffer, int, int, bytes, int], bytes]
AllocMessage = Callable[[int], bytes]
UnmaskAt = Callable[[bytes, int, Buffer, int, int, "bytes | None", int], None]
UnmaskInto = Callable[[bytearray, Buffer, int, int, bytes, int], None]
SkipDataFrames = Callable[[Buffer, int, bool], int]


class AssemblyLike(Protocol):
    """A fragmented binary message assembled in place (the C `Assembly`)."""

    def reserve(self, more: int) -> None: ...
    def add(self, data: Buffer, start: int, end: int, key: bytes | None, phase: int) -> None: ...
    def finish(self) -> bytes: ...
    def __len__(self) -> int: ...
    @property
    def capacity(self) -> int: ...


unmask: Unmask = py_unmask
unmask_into: UnmaskInto = py_unmask_into
skip_data_frames: SkipDataFrames = py_skip_data_frames
#: C only (None without the speedup): a single-frame message filled in place.
alloc_message: AllocMessage | None = None
unmask_at: UnmaskAt | None = None
#: C only (None without the speedup): `Assembly(limit)` for a fragmented message.
Assembly: Callable[[int], AssemblyLike] | None = None
SPEEDUPS = False

if not os.environ.get("SOCKER_NO_SPEEDUPS"):
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:  # not built (no compiler at install time): Python it is
        _speedups = None
    _NAMES = (
        "unmask",
        "unmask_into",
        "skip_data_frames",
        "alloc_message",
        "unmask_at",
        "Assembly",
    )
    if _speedups is not None and all(hasattr(_speedups, name) for name in _NAMES):
        # (an extension built from an older _speedups.c is ignored, not half used)
        unmask = _speedups.unmask
        unmask_into = _speedups.unmask_into
        skip_data_frames = _speedups.skip_data_frames
        alloc_message = _speedups.alloc_message
        unmask_at = _speedups.unmask_at
        Assembly = _speedups.Assembly
        SPEEDUPS = True


def mask(key: bytes, data: Buffer) -> bytes:
    """`data` XOR the 4-byte masking `key` (a client's outgoing payload)."""
    return unmask(data, 0, len(data), key, 0)


__all__ = ["SPEEDUPS", "mask", "skip_data_frames", "unmask", "unmask_into"]
