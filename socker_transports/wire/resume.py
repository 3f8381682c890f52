"""Resume on the wire: the subprotocol, the session token and socker's control messages.

The wire format (the README's "Resume" section documents it for other clients):

- A client that can resume offers the subprotocol `socker.resume.v1`; a server
  whose route's flow has `resume_window` set selects it. Only then is anything
  below in force; otherwise the connection is a plain socker connection.
- On such a connection *text* frames are socker's control messages (small JSON
  objects with a "type"); application messages are binary frames, as always.
  No per-message envelope: each side counts the binary messages it received.
- Fresh connection: the server's first frame is
  `{"type":"session","token":T,"window":W,"heartbeat":H}` (T: 22 characters,
  128 random bits, base64url; W: seconds; H: the server's `ping_interval` in
  seconds, absent when it does not ping).
- Either side, while connected: `{"type":"ack","received":N}`: "I have received
  N of your messages", so the other side may forget them (sent after every 32
  messages or 64 KiB received, and with each keepalive ping when something is
  unacknowledged). A server sends one with *every* keepalive ping, repeating N
  when nothing new came: the heartbeat H announced, which a browser (it cannot
  see pings) watches: no frame for 2 * H + 1 seconds means the transport is
  dead. A repeated count is always accepted; a count going backwards or past
  what was sent is a protocol error.
- Resume: the client reconnects to the same URL offering `socker.resume.v1` and
  `socker.resume.<T>.<N>` (N: how many messages it received); browsers can set
  subprotocols, never headers. The server answers 101 selecting
  `socker.resume.v1`, then `{"type":"resumed","token":T2,"received":M,"heartbeat":H}`
  (T2 replaces T: tokens are single-use; H as in "session"), then the messages
  the client missed (those after N), then live traffic. The client, on
  "resumed", sends the messages the server missed (those after M), then live
  traffic.
- A resume that cannot be honoured is answered by 101 and then a close frame
  with its code (4403, 4410, 4412, 4413: socker_core.CLOSE_CODES).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from socker_core import ResumeSession

RESUME_SUBPROTOCOL = "socker.resume.v1"
_OFFER_PREFIX = "socker.resume."
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")
_OFFER = re.compile(r"socker\.resume\.([A-Za-z0-9_-]{22})\.([0-9]{1,15})")

#: Largest control message accepted (bytes of UTF-8); larger is a protocol error.
MAX_CONTROL = 4096


def new_token() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def resume_offer(token: str, received: int) -> str:
    return f"{_OFFER_PREFIX}{token}.{received}"


@dataclass(frozen=True, slots=True)
class Offer:
    """What a client's Sec-WebSocket-Protocol said about resume."""

    resumable: bool
    token: str | None = None
    received: int = 0


def parse_offer(offered: tuple[str, ...]) -> Offer:
    if RESUME_SUBPROTOCOL not in offered:
        return Offer(False)
    for protocol in offered:
        match = _OFFER.fullmatch(protocol)
        if match is not None:
            return Offer(True, match.group(1), int(match.group(2)))
    return Offer(True)


def without_token(offered: tuple[str, ...]) -> tuple[str, ...]:
    """The offered subprotocols minus the token-bearing one (for what a handshake
    hook or a log sees)."""
    return tuple(p for p in offered if _OFFER.fullmatch(p) is None)


def control(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def _positive(value: object) -> bool:
    """A JSON number above zero."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def parse_control(text: str) -> dict[str, Any] | None:
    """A control message, or None when it is malformed (a protocol error)."""
    if len(text) > MAX_CONTROL:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind == "ack" or kind == "resumed":
        received = message.get("received")
        if type(received) is not int or received < 0:
            return None
    if kind == "session" or kind == "resumed":
        token = message.get("token")
        if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
            return None
    if kind == "session" and not _positive(message.get("window")):
        return None
    beat = message.get("heartbeat")  # seconds between a server's acks (optional)
    if (kind == "session" or kind == "resumed") and beat is not None and not _positive(beat):
        return None
    if kind not in ("ack", "session", "resumed"):
        return None
    return message


@dataclass(slots=True)
class WireResume:
    """One wire's resume state (one slot on the Wire; None on plain connections)."""

    #: The session this wire holds (None on a client until the server named one).
    session: ResumeSession | None = None
    #: Client: this connection offered resume (reconnect=True).
    reconnect: bool = False
    #: Client: the subprotocols offered (the token offer included).
    offered: tuple[str, ...] = ()
    #: Client resuming: the detached session taken from the previous transport.
    resume_from: ResumeSession | None = None
    #: Client: "resumed" not yet received (binary frames before it are an error).
    resuming: bool = False
    #: This wire no longer moves the session's bytes (resumed elsewhere).
    handed_off: bool = False
    #: Messages / bytes received since our last ack.
    unacked: int = 0
    unacked_bytes: int = 0
    #: A fragmented control message being reassembled.
    #: Server after a resume: the client's first frame confirms the new token.
    unconfirmed: bool = False
    #: Server, during the handshake: what the client offered.
    offer: Offer | None = None
    #: Kept sessions (cross-worker resume): Send events of the session seen so far
    #: (the number of the last one), the messages held by the write-ahead rule
    #: (number, data), the count stated by our last ack, and whether the keeper is
    #: looking the presented token up.
    numbered: int = 0
    gated: deque[tuple[int, bytes | str]] | None = None
    acked_at: int = 0
    lookup: bool = False
