"""Frames in: the receive side of RFC 6455 section 5, sans-I/O.

`FrameReader.feed(data)` parses socket bytes into events: a complete binary message
(`bytes`), a complete text message (`str`), `Ping`, `Pong`, `PeerClose`, and the two
ways parsing stops: `Failed` (the peer broke the framing: fail the connection) and
`Refused` (the framing still holds but the message is refused: 1003 text not
accepted, 1007 invalid UTF-8, 1009 too big: close, then `skip` data frames while
waiting for the peer's close frame, so a conforming peer's answer is read, not
met with a reset).

It accepts and refuses exactly what wsproto's frame layer does, at the same byte,
with the same close codes (tests/transports/test_reader_parity.py holds the two side
by side for arbitrary byte streams split at arbitrary points), except that a close
frame may carry any code the IANA registry lists as valid (wsproto refuses 1014).

Why not wsproto's: it keeps every frame's payload in a `bytes` of its own and copies
each payload several times (its buffer, its masker, its event); here a payload is
unmasked straight from the read into the message. With the C speedup that is the
one copy for every uncompressed binary message: a single frame is unmasked into
the `bytes` object the handler gets (its size is in the header), however many
reads it takes; a fragmented one grows in a `bytes` object only the reader holds
(`Assembly`, resized in place) and is handed over at its exact size. Without it
(and for fragmented text) a fragmented message grows in a bytearray and is copied
once more to `bytes` or `str`. Only an incomplete frame header or control frame
(at most 139 bytes) is ever held between reads; a data frame's payload streams
into its message as it arrives, bounded by `max_size` and `max_fragments`.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

from socker_core._codes import CloseCode

from . import masking
from .deflate import Deflate
from .policy import TEXT_REFUSED  # one decision, shared with the ASGI adapter

#: The longest unit ever held between reads: a control frame (14-byte header, 125
#: bytes of payload). A data frame's payload is never held, only its header.
_MAX_HELD = 14 + 125

#: Close codes a peer may send (IANA "WebSocket Close Code Number Registry", the
#: codes valid in a close frame) besides the 3000-4999 range.
_VALID_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)

_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClose:
    """The peer's close frame: its code (1005 when it carried none) and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The peer broke the framing (1002; 1007 for a close reason that is not UTF-8):
    nothing more will be parsed."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The current message is refused (1003 text not accepted, 1007 invalid UTF-8,
    1009 too big or in too many fragments); the reader now skips data frames, still
    looking for the peer's close frame (see `skip`)."""

    code: int
    reason: str


ReaderEvent = bytes | str | Ping | Pong | PeerClose | Failed | Refused


class _Fail(Exception):
    """The peer broke the protocol: `event` is the last word."""

    def __init__(self, code: int, reason: str) -> None:
        self.event = Failed(code, reason)


class FrameReader:
    """Parses the frames of one connection. `client`: frames come from a server
    (unmasked); otherwise from a client (masked). `max_size` (None: no limit) and
    `max_fragments` bound a message; `text=False` refuses text messages (1003)."""

    __slots__ = (
        "_assembly",
        "_client",
        "_compressed",
        "_dead",
        "_deflate",
        "_fin",
        "_fragments",
        "_frame_opcode",
        "_held",
        "_in_place",
        "_key",
        "_key_phase",
        "_max_fragments",
        "_max_size",
        "_message",
        "_message_opcode",
        "_message_size",
        "_remaining",
        "_rsv1",
        "_skipping",
        "_started",
        "_text",
        "_utf8",
    )

    def __init__(
        self,
        *,
        client: bool,
        max_size: int | None,
        max_fragments: int,
        text: bool = True,
        deflate: Deflate | None = None,
    ) -> None:
        self._client = client
        self._deflate = deflate  # permessage-deflate, when negotiated
        self._max_size = max_size
        self._max_fragments = max_fragments
        self._text = text
        self._held = b""  # an incomplete header or control frame
        self._dead = False  # a close frame or a failure: nothing more is parsed
        self._skipping = False  # data frames are discarded unread (see `skip`)
        # The data frame whose payload is streaming in.
        self._remaining = 0
        self._key: bytes | None = None
        self._key_phase = 0
        self._fin = False
        self._frame_opcode = 0
        self._started = False  # its first piece was checked against the message
        self._rsv1 = False  # its RSV1 bit: the message it starts is compressed
        # The message being assembled (opcode 0: none).
        self._message_opcode = 0
        self._message: bytearray | None = None
        # A single-frame message filled in place (C speedup): the bytes object itself.
        self._in_place: bytes | None = None
        # A fragmented binary message assembled in place (C speedup).
        self._assembly: masking.AssemblyLike | None = None
        self._message_size = 0
        self._fragments = 0  # finished frames of it so far
        self._compressed = False
        self._utf8: Any = None  # an incremental UTF-8 decoder while a text message arrives

    @property
    def pending_size(self) -> int:
        """Bytes of unfinished messages held (the buffer of a fragmented message)."""
        if self._message is None and self._in_place is None and self._assembly is None:
            return 0
        return self._message_size

    @property
    def in_message(self) -> bool:
        return self._message_opcode != 0

    def skip(self) -> None:
        """From now on discard data frames unread, still checking frame headers, and
        report only close frames and failures (the connection is closing)."""
        self._skipping = True
        self._reset_message()

    def feed(self, data: bytes | bytearray | memoryview) -> list[ReaderEvent]:
        """Parse `data`; return the events it completes."""
        out: list[ReaderEvent] = []
        if self._dead or not data:
            return out
        try:
            held = self._held
            start = 0
            if held:
                old = len(held)
                joined = held + bytes(data[: _MAX_HELD - old])
                pos = self._parse(joined, 0, out)
                if self._dead:
                    return out
                if pos < old:  # the held unit is still incomplete: everything was taken
                    self._held = joined[pos:]
                    return out
                self._held = b""
                start = pos - old
            pos = self._parse(data, start, out)
            if pos < len(data) and not self._dead:
                self._held = bytes(data[pos:])
        except _Fail as failure:
            out.append(failure.event)
            self._dead = True
            self._held = b""
            self._remaining = 0
            self._reset_message()
        return out

    # -- parsing ---------------------------------------------------------------

    def _refuse(self, code: int, reason: str, out: list[ReaderEvent]) -> None:
        """Refuse the current message; what is left of its frame streams by unread."""
        out.append(Refused(code, reason))
        self.skip()

    def _parse(self, buf: bytes | bytearray | memoryview, pos: int, out: list[ReaderEvent]) -> int:
        """Parse units from `buf[pos:]`; return where the first incomplete unit starts
        (len(buf) when everything was used)."""
        n = len(buf)
        client = self._client
        while pos < n:
            if self._dead:
                return n
            if self._remaining:
                take = min(self._remaining, n - pos)
                self._payload(buf, pos, pos + take, out)
                pos += take
                continue
            if self._skipping:
                pos = masking.skip_data_frames(buf, pos, client)
                if pos >= n:
                    return n
            if n - pos < 2:
                return pos
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            if opcode not in _OPCODES:
                raise _Fail(CloseCode.PROTOCOL_ERROR, f"Invalid opcode {opcode:#x}")
            fin = b0 & 0x80
            control = opcode & 0x08
            if control and not fin:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "Invalid attempt to fragment control frame")
            length = b1 & 0x7F
            head = pos + 2
            if control and length > 125:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "Control frame with payload len > 125")
            if length == 126:
                if n - pos < 4:
                    return pos
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = pos + 4
                if length <= 125:
                    raise _Fail(
                        CloseCode.PROTOCOL_ERROR,
                        "Payload length used 2 bytes when 1 would have sufficed",
                    )
            elif length == 127:
                if n - pos < 10:
                    return pos
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = pos + 10
                if length <= 0xFFFF:
                    raise _Fail(
                        CloseCode.PROTOCOL_ERROR,
                        "Payload length used 8 bytes when 2 would have sufficed",
                    )
                if length >> 63:
                    raise _Fail(CloseCode.PROTOCOL_ERROR, "8-byte payload length with non-zero MSB")
            rsv = b0 & 0x70
            if rsv and (rsv != 0x40 or self._deflate is None or opcode == _OP_CONT or control):
                raise _Fail(CloseCode.PROTOCOL_ERROR, "Reserved bit set unexpectedly")
            if b1 & 0x80:
                if client:
                    raise _Fail(CloseCode.PROTOCOL_ERROR, "client received unexpected masked frame")
                if n - head < 4:
                    return pos
                key: bytes | None = bytes(buf[head : head + 4])
                head += 4
            elif not client:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "server received unexpected unmasked frame")
            else:
                key = None
            end = head + length
            if control:
                if end > n:
                    return pos
                self._control(opcode, buf, head, end, key, out)
                pos = end
                continue
            # A data frame.
            max_size = self._max_size
            if (
                max_size is not None
                and not self._skipping
                and self._message_size + length > max_size
            ):
                self._refuse(
                    CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes", out
                )
            if self._skipping:  # its payload streams by unread
                self._key = key
                self._remaining = length
                pos = head
                continue
            if fin and end <= n and self._message_opcode == 0 and opcode:
                # The common case: a whole message in one frame, in this read.
                if key is None:
                    payload = bytes(buf[head:end])
                else:
                    payload = masking.unmask(buf, head, end, key, 0)
                if rsv:
                    inflated = self._inflate(payload, True, 0, out)
                    if inflated is None:
                        pos = end
                        continue
                    payload = inflated
                if opcode == _OP_BINARY:
                    out.append(payload)
                elif self._text:
                    try:
                        out.append(payload.decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        self._refuse(CloseCode.INVALID_PAYLOAD, str(exc), out)
                else:
                    self._refuse(TEXT_REFUSED.code, TEXT_REFUSED.reason, out)
                pos = end
                continue
            self._key = key
            self._key_phase = 0
            self._remaining = length
            self._fin = bool(fin)
            self._frame_opcode = opcode
            self._started = False
            self._rsv1 = bool(rsv)
            pos = head
            if not length:
                self._payload(buf, pos, pos, out)
        return pos

    def _payload(
        self, buf: bytes | bytearray | memoryview, start: int, end: int, out: list[ReaderEvent]
    ) -> None:
        """A piece `buf[start:end]` of the current data frame's payload (empty for an
        empty frame)."""
        size = end - start
        self._remaining -= size
        done = not self._remaining
        if self._skipping:
            if done:
                self._key = None
            return
        if not self._started:
            # The frame's first piece: does it fit the message (wsproto's checks, here)?
            opcode = self._frame_opcode
            if self._message_opcode == 0:
                if opcode == _OP_CONT:
                    raise _Fail(CloseCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
                if opcode == _OP_TEXT:
                    if not self._text:
                        self._refuse(TEXT_REFUSED.code, TEXT_REFUSED.reason, out)
                        return
                    self._utf8 = _Utf8Decoder()
                self._message_opcode = opcode
                self._compressed = self._rsv1
            elif opcode != _OP_CONT:
                raise _Fail(CloseCode.PROTOCOL_ERROR, f"expected CONTINUATION, got {opcode:#x}")
            self._started = True
            if not self._compressed and masking.Assembly is not None:
                if self._fin and opcode != _OP_CONT:
                    # One frame, its length known: fill the handler's bytes object itself.
                    assert masking.alloc_message is not None
                    self._in_place = masking.alloc_message(size + self._remaining)
                elif self._message_opcode == _OP_BINARY:
                    # A fragment of a binary message: room for the whole frame in the
                    # bytes object it is assembled in (max_size was checked).
                    if self._assembly is None:
                        limit = self._max_size
                        self._assembly = masking.Assembly(-1 if limit is None else limit)
                    self._assembly.reserve(size + self._remaining)
        finished = done and self._fin
        assembly = self._assembly
        if assembly is not None:
            if size:
                assembly.add(buf, start, end, self._key, self._key_phase)
                self._key_phase = (self._key_phase + size) & 3
                self._message_size += size
            if not done:
                return
            self._key = None
            if finished:
                data = assembly.finish()
                self._reset_message()
                out.append(data)
                return
            self._count_fragment(out)
            return
        in_place = self._in_place
        if in_place is not None:
            assert masking.unmask_at is not None
            offset = self._message_size
            masking.unmask_at(in_place, offset, buf, start, end, self._key, self._key_phase)
            self._key_phase = (self._key_phase + size) & 3
            self._message_size = offset + size
            if self._utf8 is not None:
                try:
                    self._utf8.decode(memoryview(in_place)[offset : offset + size], finished)
                except UnicodeDecodeError as exc:
                    self._refuse(CloseCode.INVALID_PAYLOAD, str(exc), out)
                    return
            if finished:
                self._key = None
                is_text = self._message_opcode == _OP_TEXT
                self._reset_message()
                out.append(in_place.decode("utf-8") if is_text else in_place)
            return
        message = self._message
        if message is None:
            message = self._message = bytearray()
        if self._compressed:
            key = self._key
            if key is None:
                piece = bytes(buf[start:end])
            else:
                piece = masking.unmask(buf, start, end, key, self._key_phase)
                self._key_phase = (self._key_phase + size) & 3
            inflated = self._inflate(piece, finished, self._message_size, out)
            if inflated is None:
                return
            message += inflated
            size = len(inflated)
            self._message_size += size
        elif size:
            key = self._key
            if key is None:
                message += memoryview(buf)[start:end]
            else:
                masking.unmask_into(message, buf, start, end, key, self._key_phase)
                self._key_phase = (self._key_phase + size) & 3
            self._message_size += size
        utf8 = self._utf8
        if utf8 is not None:
            try:
                utf8.decode(memoryview(message)[len(message) - size :], finished)
            except UnicodeDecodeError as exc:
                self._refuse(CloseCode.INVALID_PAYLOAD, str(exc), out)
                return
        if not done:
            return
        self._key = None
        if finished:
            if self._message_opcode == _OP_TEXT:
                text = message.decode("utf-8")
                self._reset_message()
                out.append(text)
            else:
                data = bytes(message)
                self._reset_message()
                out.append(data)
            return
        self._count_fragment(out)

    def _count_fragment(self, out: list[ReaderEvent]) -> None:
        """A frame of the current message ended without FIN."""
        self._fragments += 1
        if self._fragments >= self._max_fragments:
            limit = self._max_fragments
            self._refuse(CloseCode.MESSAGE_TOO_BIG, f"message in more than {limit} fragments", out)

    def _inflate(
        self, piece: bytes, finished: bool, produced: int, out: list[ReaderEvent]
    ) -> bytes | None:
        """Decompress a piece of a compressed message, `produced` bytes of it already
        out: None when the message is refused (1009 past max_size, 1007 corrupt)."""
        deflate = self._deflate
        assert deflate is not None
        max_size = self._max_size
        try:
            inflated = deflate.inflate(
                piece, finished, None if max_size is None else max_size - produced
            )
        except ValueError as exc:
            self._refuse(CloseCode.INVALID_PAYLOAD, str(exc), out)
            return None
        if inflated is None:
            self._refuse(CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes", out)
        return inflated

    def _reset_message(self) -> None:
        self._in_place = None
        self._assembly = None
        self._compressed = False
        self._message_opcode = 0
        self._message = None
        self._message_size = 0
        self._fragments = 0
        self._utf8 = None

    def _control(
        self,
        opcode: int,
        buf: bytes | bytearray | memoryview,
        start: int,
        end: int,
        key: bytes | None,
        out: list[ReaderEvent],
    ) -> None:
        payload = bytes(buf[start:end]) if key is None else masking.unmask(buf, start, end, key, 0)
        if opcode == _OP_CLOSE:
            self._dead = True
            self._reset_message()
            out.append(_close_event(payload))
        elif self._skipping:
            return  # closing: pings and pongs no longer matter
        elif opcode == _OP_PING:
            out.append(Ping(payload))
        else:
            out.append(Pong(payload))


def _close_event(payload: bytes) -> PeerClose | Failed:
    """The peer's close frame, read as wsproto reads it (but accepting 1014)."""
    if not payload:
        return PeerClose(CloseCode.NO_STATUS_RECEIVED, "")
    if len(payload) == 1:
        return Failed(CloseCode.PROTOCOL_ERROR, "CLOSE with 1 byte payload")
    code = (payload[0] << 8) | payload[1]
    if code < 1000 or code > 4999:
        return Failed(CloseCode.PROTOCOL_ERROR, "CLOSE with invalid code")
    if code < 3000 and code not in _VALID_CLOSE_CODES:
        return Failed(CloseCode.PROTOCOL_ERROR, "CLOSE with reserved or local-only code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        return Failed(CloseCode.INVALID_PAYLOAD, "Error decoding CLOSE reason: " + str(exc))
    return PeerClose(code, reason)


__all__ = ["Failed", "FrameReader", "PeerClose", "Ping", "Pong", "ReaderEvent", "Refused"]
