"""socker_transports.wire: the sans-I/O websocket layer (frames + Stepper).

The package, one concept per module:

- `options`: `Options`, the limits and policies every driver shares;
- `hooks`: what a handshake hook and `http_handler` see and answer;
- `events`: what the wire tells its driver (`Opened`, `HandshakeFailed`, ...);
- `target`: `ClientTarget`, a ws:// or wss:// URL parsed once;
- `http1` / `handshake`: HTTP/1.1 heads as h11 reads them, and the RFC 6455
  opening handshake on both sides (tests/transports/test_wire_h11_parity.py);
- `reader` / `frames` / `masking`: frames in (tests/transports/test_reader_parity.py
  holds the reader against wsproto's frame layer), frames out, and XOR masking
  (the optional C `_speedups`, `SOCKER_NO_SPEEDUPS=1` forces the Python one);
- `deflate`: permessage-deflate (RFC 7692), opt-in;
- `state` -> `open_phase` -> `handshake_phase` -> `connection`: the `Wire` class in
  layers, from the state every phase shares to the driver-facing API.

Socket bytes in (`receive_data`, which may be given a view of a reused read
buffer), socket bytes out (`data_to_send`, or unjoined for a vectored write:
`chunks_to_send`), events out (`events`), time in (`tick`, `next_deadline`).
Every protocol decision both drivers need lives here, so they behave the same
by construction: the opening handshake and its limits, routing, origins, the
handshake hook, ping/pong and keepalive, the close handshake and its timeout,
fragment reassembly and `max_size`, the text-vs-binary policy and write-side
backpressure.

The decisions a server makes before any frame (routing, origins, the handshake
hook's answer, text and size policy) are pure functions in `wire.policy`, shared
with the ASGI adapter; what an operator can observe (the `on_event` events) is
decided in `wire.observe`.

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

from .connection import MAX_IOV, Wire, unsent_part
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
from .frames import frame_message, prepare_broadcast, prepare_delivery, send_through_flow
from .hooks import Accept, HandshakeHook, HandshakeRequest, HttpHandler, HttpResponse, Reject
from .observe import EventHook, ObservedEvent
from .options import (
    KEEPALIVE_TIMEOUT_REASON,
    SEND_BUFFER_OVERFLOW,
    SERVICE_RESTART_CODE,
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    Options,
    OptionsDict,
    check_shutdown,
    shutdown_reason,
)
from .resume import RESUME_SUBPROTOCOL
from .target import ClientTarget, format_host, socket_address

__all__ = [
    "KEEPALIVE_TIMEOUT_REASON",
    "MAX_IOV",
    "RESUME_SUBPROTOCOL",
    "SEND_BUFFER_OVERFLOW",
    "SERVICE_RESTART_CODE",
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Accept",
    "AwaitHandshake",
    "ClientTarget",
    "CloseResult",
    "Detached",
    "EventHook",
    "HandshakeError",
    "HandshakeFailed",
    "HandshakeHook",
    "HandshakeRequest",
    "HttpHandler",
    "HttpResponse",
    "ObservedEvent",
    "Opened",
    "Options",
    "OptionsDict",
    "Phase",
    "Reject",
    "Wire",
    "WireEvent",
    "check_shutdown",
    "format_host",
    "frame_message",
    "prepare_broadcast",
    "prepare_delivery",
    "send_through_flow",
    "shutdown_reason",
    "socket_address",
    "unsent_part",
]
