"""The signaling wire format, version 1 (see `socker_transports.webrtc`'s docstring):
one binary websocket message holding a UTF-8 JSON object per signal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from socker_core import SockerError

#: Version of the signaling wire format (the ``"v"`` field).
SIGNALING_VERSION = 1

_TYPES = frozenset({"hello", "offer", "answer", "candidate"})


class SignalingError(SockerError):
    """A signaling message that cannot be parsed or is not allowed here (closes with 4400)."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One parsed signaling message (see the module docstring for the format)."""

    type: str
    sdp: str | None = None
    candidate: str | None = None  # None with type "candidate": end of candidates
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    trickle: bool = False


def encode_signal(type: str, **fields: Any) -> bytes:
    """Encode one version-1 signaling message: ``encode_signal("offer", sdp=...)``."""
    if type not in _TYPES:
        raise ValueError(f"unknown signaling type {type!r}")
    body = {"v": SIGNALING_VERSION, "type": type, **fields}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def hello() -> bytes:
    """The answering side's handshake: ready to receive the offer (server offers)."""
    return encode_signal("hello")


def is_signal(message: bytes) -> bool:
    """True when `message` parses as a signaling message of any known version-1 type."""
    try:
        parse_signal(message)
    except SignalingError:
        return False
    return True


def parse_signal(message: bytes) -> Signal:
    """Parse one signaling message. Raises `SignalingError` for anything malformed."""
    try:
        body = json.loads(bytes(message).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignalingError("not a signaling message (expected UTF-8 JSON)") from None
    if not isinstance(body, dict):
        raise SignalingError("signaling message must be a JSON object")
    if body.get("v") != SIGNALING_VERSION:
        raise SignalingError(f"unsupported signaling version {body.get('v')!r}")
    kind = body.get("type")
    if kind not in _TYPES:
        raise SignalingError(f"unknown signaling type {kind!r}")
    trickle = body.get("trickle", False)
    if not isinstance(trickle, bool):
        raise SignalingError("'trickle' must be a boolean")
    if kind in ("offer", "answer"):
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v="):
            raise SignalingError(f"{kind} without a valid 'sdp'")
        return Signal(kind, sdp=sdp, trickle=trickle)
    if kind == "candidate":
        cand = body.get("candidate")
        if cand is None or cand == "":
            return Signal(kind)
        mid = body.get("sdpMid")
        index = body.get("sdpMLineIndex")
        if not isinstance(cand, str):
            raise SignalingError("'candidate' must be a string or null")
        if mid is not None and not isinstance(mid, str):
            raise SignalingError("'sdpMid' must be a string")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise SignalingError("'sdpMLineIndex' must be an integer")
        if mid is None and index is None:
            raise SignalingError("candidate needs 'sdpMid' or 'sdpMLineIndex'")
        return Signal(kind, candidate=cand, sdp_mid=mid, sdp_mline_index=index)
    return Signal(kind)
