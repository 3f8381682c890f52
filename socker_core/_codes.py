"""The close-code table: every way a socker connection can end, in one place."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes socker sends or reports. 4000-4999 are socker's own."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RECEIVED = 1005
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    STEP_TIMEOUT = 4408
    SEND_BUFFER_OVERFLOW = 4503
    # Resume (see README "Resume"): why a resume could not be honoured.
    RESUME_REFUSED = 4403
    SESSION_TAKEN_OVER = 4409
    SESSION_GONE = 4410
    FLOW_CHANGED = 4412
    RESUME_BUFFER_OVERFLOW = 4413
    # Scale-out (see README "Scale-out"): a room's cluster-wide sequence had a gap.
    ROOM_STATE_LOST = 4414


#: The public close-code table: code -> what it means in socker.
#: The README's table is generated from the same words.
CLOSE_CODES: dict[int, str] = {
    CloseCode.NORMAL: "flow complete, or a normal close by either side",
    CloseCode.GOING_AWAY: "server shutting down (or the peer going away)",
    CloseCode.PROTOCOL_ERROR: "websocket protocol error by the peer",
    CloseCode.UNSUPPORTED_DATA: "unsupported data: a text message where binary is expected",
    CloseCode.NO_STATUS_RECEIVED: "the peer's close frame carried no code (reported, never sent)",
    CloseCode.ABNORMAL: "no close frame: the transport was lost (reported, never sent)",
    CloseCode.INVALID_PAYLOAD: (
        "invalid UTF-8 in a text message or close reason, or compressed data that does not inflate"
    ),
    CloseCode.POLICY_VIOLATION: "policy violation (for example a handshake-time rejection)",
    CloseCode.MESSAGE_TOO_BIG: (
        "message larger than max_size (decompressed), or in more than max_fragments frames"
    ),
    CloseCode.INTERNAL_ERROR: (
        "a handler raised or returned something invalid, or a keepalive ping went unanswered"
    ),
    CloseCode.SERVICE_RESTART: (
        "service restart: the server is being replaced (reconnect, perhaps to a new release)"
    ),
    CloseCode.STEP_TIMEOUT: "a step was not left within its timeout",
    CloseCode.SEND_BUFFER_OVERFLOW: "the peer stopped reading: send buffer over max_send_buffer",
    CloseCode.RESUME_REFUSED: (
        "resume refused: the session token was already used, or is not valid for this route"
    ),
    CloseCode.SESSION_TAKEN_OVER: (
        "sent to the old transport of a session that a new connection resumed (takeover)"
    ),
    CloseCode.SESSION_GONE: "resume failed: unknown session, or its resume window expired",
    CloseCode.FLOW_CHANGED: "resume failed: the route now serves a different flow",
    CloseCode.RESUME_BUFFER_OVERFLOW: (
        "resume failed: messages to replay outgrew max_resume_buffer (the session ended)"
    ),
    CloseCode.ROOM_STATE_LOST: "room state lost: reconnect and resync",
    4400: "WebRTC signaling: a malformed, unsupported or out-of-order signaling message",
    4504: "WebRTC: the data channel did not open within open_timeout (or ICE failed)",
}

#: Codes the core itself decides (the drivers add the protocol ones).
CORE_CLOSE_CODES = frozenset(
    {CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.STEP_TIMEOUT}
)


def is_sendable_close_code(code: int) -> bool:
    """True when `code` may appear in a close frame (RFC 6455 section 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )
