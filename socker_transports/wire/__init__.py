"""socker_transports.wire: the sans-I/O websocket layer (wsproto + Stepper).

Socket bytes in (`receive_data`), socket bytes out (`data_to_send`), events out
(`events`), time in (`tick`, `next_deadline`). Every protocol decision both
drivers need lives here, so they behave the same by construction: the opening
handshake and its limits, routing, origins, the handshake hook, ping/pong and
keepalive, the close handshake and its timeout, fragment reassembly and
`max_size`, the text-vs-binary policy and write-side backpressure.

Nothing on the receive path raises: a bad peer ends in a close code or an HTTP
status. Misuse by the caller raises `socker_core.LocalProtocolError` (or
`ConnectionClosedError` for a send once closing).

How a connection ends (`Closed.code`, `Wire.close_code`; the table is
`socker_core.CLOSE_CODES`):

- the peer closed: the peer's code (1005 when its close frame carried none);
- we closed (a handler, a step timeout, `Wire.close`, a 1003/1009/1007/1002
  decision): the code we sent, whether or not the peer answered in time;
- the transport ended without a close frame: 1006;
- the peer stopped reading (`max_send_buffer`): 4503;
- no pong within `ping_timeout`: 1011 "keepalive ping timeout".
"""

from .connection import Wire
from .events import (
    AwaitHandshake,
    CloseResult,
    Detached,
    HandshakeError,
    HandshakeFailed,
    Opened,
    Phase,
    WireEvent,
)
from .hooks import Accept, HandshakeHook, HandshakeRequest, HttpHandler, HttpResponse, Reject
from .options import (
    KEEPALIVE_TIMEOUT_REASON,
    SEND_BUFFER_OVERFLOW,
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    Options,
)
from .resume import RESUME_SUBPROTOCOL
from .target import ClientTarget, format_host

__all__ = [
    "KEEPALIVE_TIMEOUT_REASON",
    "RESUME_SUBPROTOCOL",
    "SEND_BUFFER_OVERFLOW",
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Accept",
    "AwaitHandshake",
    "ClientTarget",
    "CloseResult",
    "Detached",
    "HandshakeError",
    "HandshakeFailed",
    "HandshakeHook",
    "HandshakeRequest",
    "HttpHandler",
    "HttpResponse",
    "Opened",
    "Options",
    "Phase",
    "Reject",
    "Wire",
    "WireEvent",
    "format_host",
]
