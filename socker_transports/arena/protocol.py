"""The arena's messages: what goes on the data channel and what on the websocket.

Data channel (unordered, no retransmits: a late state is simply older than the
one already drawn), big-endian binary:

- input, player -> server, 13 bytes: ``b"I"``, seq u32, dx f32, dy f32.
  ``seq`` counts up from 1; the server ignores an input older than one it applied.
- world, server -> every player, each tick: ``b"W"``, frame u32, tick u32, n u8, then n times
  (slot u16, x f32, y f32, score u16, last_input u32), then m u8 and m times
  (x f32, y f32) for the points. ``last_input`` echoes the newest input of that
  player the server applied: the player measures input-to-echo latency with it.
  ``frame`` counts the worlds the server sent (one per tick, unless the server
  stalled and ticked several times at once): a gap in it is a state lost on the way.

Websocket (reliable, in order), a tag byte then UTF-8 JSON:

- server -> player: ``H`` welcome (the scene, sent on open: ``id``, ``arena``
  [w, h], ``tick_rate``); ``R`` roster (players already in the match, to the
  newcomer); ``J`` joined / ``L`` left (``slot``, ``id``, ``name``, ``bot``: to the
  whole match room); ``S`` score (``slot``, ``score``); ``C`` chat (``slot``,
  ``name``, ``text``).
- player -> server: ``N`` name (``name``, ``bot``; the first message), then the
  WebRTC signaling of `socker_transports.webrtc` (``hello``, ``answer``), then
  ``C`` chat (``text``) and ``Q`` quit (``{}``: the server's flow completes, 1000).

A message that does not parse closes the connection with 1003.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .game import Point, World

INPUT = b"I"
WORLD = b"W"

_INPUT = struct.Struct("!cIff")
_HEAD = struct.Struct("!cIIB")
_PLAYER = struct.Struct("!HffHI")
_POINT = struct.Struct("!ff")

WELCOME, ROSTER, JOINED, LEFT, SCORE, CHAT, NAME, QUIT = (bytes([c]) for c in b"HRJLSCNQ")
CONTROL_TAGS = frozenset({WELCOME, ROSTER, JOINED, LEFT, SCORE, CHAT, NAME, QUIT})


class ProtocolError(ValueError):
    """A message that does not follow the arena protocol."""


# -- data channel ---------------------------------------------------------------------


def encode_input(seq: int, dx: float, dy: float) -> bytes:
    return _INPUT.pack(INPUT, seq, dx, dy)


def decode_input(data: bytes) -> tuple[int, float, float]:
    if len(data) != _INPUT.size or data[:1] != INPUT:
        raise ProtocolError("an input is b'I' + seq u32 + dx f32 + dy f32")
    _, seq, dx, dy = _INPUT.unpack(data)
    return seq, dx, dy


def encode_world(world: World, frame: int) -> bytes:
    parts = [_HEAD.pack(WORLD, frame, world.tick, len(world.players))]
    parts += [_PLAYER.pack(*p) for p in world.players]
    parts.append(bytes([len(world.points)]))
    parts += [_POINT.pack(p.x, p.y) for p in world.points]
    return b"".join(parts)


def decode_world(data: bytes) -> tuple[int, World]:
    """(frame, world) from a world message."""
    try:
        _, frame, tick, n = _HEAD.unpack_from(data, 0)
        offset = _HEAD.size
        players = []
        for _ in range(n):
            players.append(_PLAYER.unpack_from(data, offset))
            offset += _PLAYER.size
        m = data[offset]
        offset += 1
        points = []
        for _ in range(m):
            points.append(Point(*_POINT.unpack_from(data, offset)))
            offset += _POINT.size
    except (struct.error, IndexError):
        raise ProtocolError("truncated world state") from None
    if data[:1] != WORLD or offset != len(data):
        raise ProtocolError("not a world state")
    return frame, World(tick, tuple(players), tuple(points))


# -- websocket ------------------------------------------------------------------------


def control(tag: bytes, **body: Any) -> bytes:
    if tag not in CONTROL_TAGS:
        raise ValueError(f"unknown control tag {tag!r}")
    return tag + json.dumps(body, separators=(",", ":")).encode()


def decode_control(data: bytes) -> tuple[bytes, dict[str, Any]]:
    tag = bytes(data[:1])
    if tag not in CONTROL_TAGS:
        raise ProtocolError(f"unknown control message {tag!r}")
    try:
        body = json.loads(bytes(data[1:]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("a control message is a tag byte and UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("a control message's body is a JSON object")
    return tag, body
