"""The limits and policies every driver shares (`Options`), and the constants
that name how a connection ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from socker_core import LocalProtocolError
from socker_core._codes import CloseCode

MiB = 1024 * 1024

#: The reason of the 1011 close sent when a keepalive ping goes unanswered.
KEEPALIVE_TIMEOUT_REASON = "keepalive ping timeout"

#: The connection was dropped because the peer stopped reading (see `max_send_buffer`).
SEND_BUFFER_OVERFLOW = int(CloseCode.SEND_BUFFER_OVERFLOW)


@dataclass(frozen=True)
class Options:
    """Limits and policies. The same names and defaults in every driver.

    - `max_size`: largest message accepted, checked while fragments arrive and
      against a frame header's announced length, before the payload is buffered
      (1009). None disables.
    - `max_fragments`: most frames one message may arrive in (websockets' reference
      is 4,096); a message still unfinished after that many frames is refused with
      1009, so a flood of tiny continuation frames costs little CPU and memory.
    - `max_queue`: messages that may wait while an async handler is busy; past it the
      driver stops reading the socket (backpressure, never dropping).
    - `open_timeout`: seconds for the opening handshake (a server answers 408).
    - `close_timeout`: seconds to wait for the peer's close frame (or the server's EOF).
    - `ping_interval` / `ping_timeout`: keepalive; a peer that has not answered a
      ping within `ping_timeout` is dropped with 1011. None disables.
    - `max_line` / `max_headers`: handshake limits: the longest request, status or
      header line, and the most header lines (414 for the request line, 431 beyond).
    - `origins`: allowed `Origin` values (None in the list admits a missing Origin);
      None allows every origin. 403 otherwise.
    - `subprotocols`: offered by a client; a server picks the first of its own
      list that the client offered (unless the handshake hook chooses).
    - `accept_text`: pass text messages to handlers as `str` (binary ones stay
      `bytes`) instead of closing with 1003.
    - `compression`: "deflate" negotiates permessage-deflate (RFC 7692) when the
      peer offers or accepts it; None (the default) never does. `max_size` then
      bounds the decompressed size, enforced while decompressing (1009).
    - `server_no_context_takeover` / `client_no_context_takeover`: that side
      starts each message with a fresh compression context (less memory held
      between messages, a lower ratio); offered by a client, granted by a server.
    - `write_limit`: outgoing bytes not yet taken by the driver above which the
      wire stops asking for more input, so a handler replying to a flood cannot
      outrun a slow peer.
    - `max_send_buffer`: outgoing bytes above which the peer is considered to have
      stopped reading: the connection is dropped with 4503 instead of buffering
      without limit.
    """

    max_size: int | None = 1 * MiB
    max_fragments: int = 4096
    max_queue: int = 16
    open_timeout: float | None = 10.0
    close_timeout: float | None = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_line: int = 8192
    max_headers: int = 128
    origins: Sequence[str | None] | None = None
    subprotocols: Sequence[str] = ()
    accept_text: bool = False
    compression: str | None = None
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    write_limit: int = 64 * 1024
    max_send_buffer: int = 16 * MiB

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 1:
            raise LocalProtocolError(f"max_size must be positive or None, got {self.max_size}")
        if self.max_fragments < 1:
            raise LocalProtocolError(f"max_fragments must be at least 1, got {self.max_fragments}")
        if self.max_queue < 1:
            raise LocalProtocolError(f"max_queue must be at least 1, got {self.max_queue}")
        for name in ("open_timeout", "close_timeout", "ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise LocalProtocolError(f"{name} must be positive or None, got {value}")
        if self.max_line < 256 or self.max_headers < 1:
            raise LocalProtocolError("max_line must be >= 256 and max_headers >= 1")
        if self.compression not in (None, "deflate"):
            raise LocalProtocolError(
                f'compression must be None or "deflate", got {self.compression!r}'
            )
        if self.write_limit < 1 or self.max_send_buffer < 1:
            raise LocalProtocolError("write_limit and max_send_buffer must be positive")
        for name in ("origins", "subprotocols"):
            if isinstance(getattr(self, name), (str, bytes)):
                raise LocalProtocolError(f"{name} must be a sequence of strings, not a string")
        for protocol in self.subprotocols:
            if not protocol or not protocol.isascii() or any(c in protocol for c in ", \r\n"):
                raise LocalProtocolError(f"invalid subprotocol {protocol!r}")


#: The Options used when none are given (frozen, so one instance serves every wire).
_DEFAULT_OPTIONS = Options()


#: Close code and reason a server sends to live connections when it shuts down.
SHUTDOWN_CODE = CloseCode.GOING_AWAY
SHUTDOWN_REASON = "server shutting down"
