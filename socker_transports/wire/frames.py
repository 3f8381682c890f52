"""Frames out: data frames (one per message) and control frames, masked by a client.

Data frames are framed here rather than by wsproto, which copies a payload four
times on the way out: a bytes payload is queued as is and copied at most once,
when `Wire.data_to_send` joins the pending chunks; never when the driver writes
`Wire.chunks_to_send` vectored (a client's masking is then the one copy, at C
speed when `masking` has its speedup).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection

from socker_core import Connection, ConnectionClosedError, Registry, RoomRef
from socker_core._codes import CloseCode
from socker_core._stepper import stepper_of

from .masking import mask

OP_TEXT, OP_BINARY = 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_SMALL_HEADERS = tuple(bytes((0x82, n)) for n in range(126))
_SMALL_MASKED_HEADERS = tuple(bytes((0x82, 0x80 | n)) for n in range(126))
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def data_frame(
    payload: bytes, *, text: bool, client: bool, rsv1: bool = False
) -> tuple[bytes, bytes]:
    """(header, payload) of a whole message in one frame; a client's payload masked;
    `rsv1` marks a compressed message (permessage-deflate)."""
    n = len(payload)
    first = (0x81 if text else 0x82) | (0x40 if rsv1 else 0)
    plain = first == 0x82  # the precomputed small headers are for plain binary frames
    if client:
        key = os.urandom(4)
        if n < 126:
            header = (_SMALL_MASKED_HEADERS[n] if plain else bytes((first, 0x80 | n))) + key
        elif n < 65536:
            header = _HEADER_16(first, 0xFE, n) + key
        else:
            header = _HEADER_64(first, 0xFF, n) + key
        return header, mask(key, payload)
    if n < 126:
        header = _SMALL_HEADERS[n] if plain else bytes((first, n))
    elif n < 65536:
        header = _HEADER_16(first, 126, n)
    else:
        header = _HEADER_64(first, 127, n)
    return header, payload


def frame_message(data: bytes | bytearray | memoryview) -> bytes:
    """The bytes of one server (unmasked) binary frame carrying `data`: built once for
    a broadcast, queued on many wires with `Wire.send_frame`: the same bytes for every
    server connection that negotiated no compression (the others frame their own)."""
    n = len(data)
    if n < 126:
        header = _SMALL_HEADERS[n]
    elif n < 65536:
        header = _HEADER_16(0x82, 126, n)
    else:
        header = _HEADER_64(0x82, 127, n)
    return header + bytes(data)


def prepare_broadcast(
    registry: Registry,
    data: bytes | bytearray | memoryview,
    room: str | None,
    skip: Connection | Collection[Connection] | None,
) -> tuple[list[Connection], bytes, bytes]:
    """What every driver's `Server.broadcast` starts with: the recipients the core's
    registry decides, the payload (a snapshot of `data`) and its frame, built once
    (no recipients: an empty list, and nothing built)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"broadcast() takes bytes, got {type(data).__name__}")
    recipients = registry.recipients(room, skip)
    if not recipients:
        return recipients, b"", b""
    payload = bytes(data)
    return recipients, payload, frame_message(payload)


def prepare_delivery(
    registry: Registry, room: str, skip_ids: Collection[str], payload: bytes
) -> tuple[list[Connection], bytes]:
    """What every driver's delivery of a cluster publication starts with: the local
    members of `room` but those whose id is in `skip_ids`, and the payload's frame,
    built once (no recipients: an empty list, and nothing built)."""
    recipients = registry.recipients(room)
    if skip_ids and recipients:
        recipients = [conn for conn in recipients if conn.id not in skip_ids]
    if not recipients:
        return recipients, b""
    return recipients, frame_message(payload)


def send_through_flow(conn: Connection, payload: bytes, origin: RoomRef | None = None) -> bool:
    """A broadcast's copy for a connection whose wire cannot take the prebuilt frame
    now (still opening, or detached): through its Stepper, in order (and kept for
    replay when detached). False when it is no longer open."""
    try:
        if origin is None:
            conn.send(payload)
        else:
            stepper_of(conn).deliver(payload, origin)
    except ConnectionClosedError:
        return False
    return True


def control_frame(opcode: int, payload: bytes, client: bool) -> bytes:
    """A ping, pong or close frame (payload at most 125 bytes)."""
    n = len(payload)
    if client:
        key = os.urandom(4)
        return bytes((0x80 | opcode, 0x80 | n)) + key + mask(key, payload)
    return bytes((0x80 | opcode, n)) + payload


def close_frame(code: int, reason: str, client: bool) -> bytes:
    """A close frame as wsproto wrote one: no payload for 1005 (echoing a close that
    carried no code), 1000 for the other codes never sent (1006, 1015), the reason
    cut to 123 bytes of UTF-8 on a character boundary."""
    if code == CloseCode.NO_STATUS_RECEIVED:
        return control_frame(OP_CLOSE, b"", client)
    if code in (1006, 1015):
        code = CloseCode.NORMAL
    encoded = reason.encode("utf-8")
    if len(encoded) > 123:
        encoded = encoded[:123].decode("utf-8", "ignore").encode("utf-8")
    return control_frame(OP_CLOSE, struct.pack("!H", code) + encoded, client)


def _truncate_reason(reason: str, limit: int = 123) -> str:
    """`reason` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return reason
    return encoded[:limit].decode("utf-8", "ignore")
