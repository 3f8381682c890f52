"""The limits and policies every driver shares (`Options`), and the constants
that name how a connection ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from socker_core import LocalProtocolError, is_sendable_close_code
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
      ping within `ping_timeout` is dropped with 1011. None disables. A resumable
      server connection also sends an ack with every ping: the "heartbeat" it
      announces (its `ping_interval`), which lets a browser notice a silent drop.
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
    - `frames_per_turn`: the most frames (data, fragments and control frames alike)
      one wire call handles; the rest of what was read waits (`Wire.input_pending`)
      while the driver lets other connections run, so one flooding peer cannot
      starve the others. None: no bound (everything read is handled at once).
    - `linger_timeout` / `linger_bytes`: once a connection ends after writing its
      last bytes (an HTTP error, a close frame), the driver shuts down its write
      side and reads and discards until the peer's EOF, for at most this many
      seconds and bytes, so those bytes are read instead of being destroyed by the
      reset that closing a socket with unread input sends. `linger_timeout` None:
      close at once. After failing a connection because the peer broke the
      protocol (1002) the same read-and-discard is bounded by `close_timeout`
      instead (still by `linger_bytes`), whatever `linger_timeout` says, so the
      peer's answer to our close frame is read rather than met with a reset; a
      refused message (1003, 1007, 1009) goes through the close handshake, which
      keeps reading (and discarding data frames) for up to `close_timeout`.
    - `max_connections`: the most connections a server serves at once (handshakes
      in progress included); past it a new connection is answered 503 at once and
      closed (one log line), and existing connections are untouched. None: the
      driver's default, under the process's descriptor limit (and, for the
      threaded driver, its thread limit; see `socker_transports._limits`).
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
    frames_per_turn: int | None = 64
    linger_timeout: float | None = 2.0
    linger_bytes: int = 1 * MiB
    max_connections: int | None = None

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
        if self.frames_per_turn is not None and self.frames_per_turn < 1:
            raise LocalProtocolError(
                f"frames_per_turn must be positive or None, got {self.frames_per_turn}"
            )
        if self.linger_timeout is not None and not self.linger_timeout > 0:
            raise LocalProtocolError(
                f"linger_timeout must be positive or None, got {self.linger_timeout}"
            )
        if self.linger_bytes < 0:
            raise LocalProtocolError(f"linger_bytes must be >= 0, got {self.linger_bytes}")
        if self.max_connections is not None and self.max_connections < 1:
            raise LocalProtocolError(
                f"max_connections must be positive or None, got {self.max_connections}"
            )
        for name in ("origins", "subprotocols"):
            if isinstance(getattr(self, name), (str, bytes)):
                raise LocalProtocolError(f"{name} must be a sequence of strings, not a string")
        for protocol in self.subprotocols:
            if not protocol or not protocol.isascii() or any(c in protocol for c in ", \r\n"):
                raise LocalProtocolError(f"invalid subprotocol {protocol!r}")


class OptionsDict(TypedDict, total=False):
    """The `Options` fields as keyword arguments, for the type checker.

    Drivers declare `**options: Unpack[OptionsDict]`, so `serve(flow, max_sise=1)`
    fails `mypy --strict` instead of failing at run time. Every field of `Options`
    must be here with the same type (tests/typing/test_options_sync.py checks):
    a branch that adds an `Options` field adds it here too.
    """

    max_size: int | None
    max_queue: int
    open_timeout: float | None
    close_timeout: float | None
    ping_interval: float | None
    ping_timeout: float | None
    max_line: int
    max_headers: int
    origins: Sequence[str | None] | None
    subprotocols: Sequence[str]
    accept_text: bool
    write_limit: int
    max_send_buffer: int
    frames_per_turn: int | None
    linger_timeout: float | None
    linger_bytes: int
    max_connections: int | None
    max_fragments: int
    compression: str | None
    server_no_context_takeover: bool
    client_no_context_takeover: bool


#: The Options used when none are given (frozen, so one instance serves every wire).
_DEFAULT_OPTIONS = Options()


#: Close code and reason a server sends to live connections when it shuts down.
SHUTDOWN_CODE = CloseCode.GOING_AWAY
SHUTDOWN_REASON = "server shutting down"

#: The code for "a new release takes over": `server.close(code=SERVICE_RESTART_CODE)`.
SERVICE_RESTART_CODE = CloseCode.SERVICE_RESTART

_SHUTDOWN_REASONS = {
    int(CloseCode.GOING_AWAY): SHUTDOWN_REASON,
    int(CloseCode.SERVICE_RESTART): "service restart",
}


def shutdown_reason(code: int) -> str:
    """The reason a server closing its connections with `code` sends."""
    return _SHUTDOWN_REASONS.get(int(code), "server closing")


def check_shutdown(code: int, drain_timeout: float | None) -> None:
    """Refuse a server close code that cannot be sent, or a bad drain timeout."""
    if not is_sendable_close_code(code):
        raise LocalProtocolError(f"close code {code} cannot be sent in a close frame")
    if drain_timeout is not None and not drain_timeout >= 0:
        raise LocalProtocolError(f"drain_timeout must be >= 0 or None, got {drain_timeout}")
