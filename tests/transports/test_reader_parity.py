"""socker's frame reader against wsproto's frame layer, side by side.

For arbitrary byte streams (well-formed frames, frames wrong on purpose and raw
noise), split at arbitrary points, both must produce the same events after every
read: the same messages (reassembled), pings, pongs and close frames, and fail at
the same read with the same close code. The one deliberate difference: a close
frame with code 1014 (valid in the IANA registry) is accepted by socker, refused by
wsproto; it is kept out of the streams here and tested on its own.

Runs with and without the C speedup (SOCKER_NO_SPEEDUPS; see the Makefile): the
reader uses whichever `masking` picked, and `test_masking.py` holds the two
implementations against each other.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from socker_transports.wire import reader as socker_reader
from socker_transports.wire.reader import FrameReader

SETTINGS = settings(
    max_examples=int(os.environ.get("SOCKER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Normal = tuple[Any, ...]


class WsprotoReference:
    """wsproto's frame-level `Connection`, its events reassembled into messages."""

    def __init__(self, client: bool) -> None:
        role = ConnectionType.CLIENT if client else ConnectionType.SERVER
        self.ws = Connection(role)
        self.parts: list[Any] = []
        self.done = False

    def feed(self, chunk: bytes) -> list[Normal]:
        if self.done:
            return []
        self.ws.receive_data(chunk)
        out: list[Normal] = []
        for event in self.ws.events():
            if isinstance(event, (BytesMessage, TextMessage)):
                self.parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        out.append(("text", "".join(self.parts)))
                    else:
                        out.append(("binary", b"".join(self.parts)))
                    self.parts = []
            elif isinstance(event, Ping):
                out.append(("ping", bytes(event.payload)))
            elif isinstance(event, Pong):
                out.append(("pong", bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                self.done = True
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    out.append(("close", int(event.code), event.reason or ""))
                else:  # a parse failure, reported as a close event while still open
                    out.append(("fail", int(event.code)))
                break
        return out


class SockerReader:
    def __init__(self, client: bool) -> None:
        self.reader = FrameReader(client=client, max_size=None, max_fragments=1 << 30)
        self.done = False

    def feed(self, chunk: bytes) -> list[Normal]:
        out: list[Normal] = []
        if self.done:
            return out
        for event in self.reader.feed(chunk):
            if isinstance(event, bytes):
                out.append(("binary", event))
            elif isinstance(event, str):
                out.append(("text", event))
            elif isinstance(event, socker_reader.Ping):
                out.append(("ping", event.payload))
            elif isinstance(event, socker_reader.Pong):
                out.append(("pong", event.payload))
            elif isinstance(event, socker_reader.PeerClose):
                out.append(("close", event.code, event.reason))
            elif isinstance(event, (socker_reader.Failed, socker_reader.Refused)):
                # Refused: invalid UTF-8 (1007) ends the message, not the framing;
                # wsproto stops there, so the comparison stops there too.
                out.append(("fail", event.code))
                self.done = True
                break
            else:  # pragma: no cover
                raise AssertionError(event)
        return out


def build_frame(
    payload: bytes,
    opcode: int,
    *,
    fin: bool,
    rsv: int,
    masked: bool,
    key: bytes,
    wide: int,
) -> bytes:
    """A frame; `wide` 1 or 2 forces a (possibly non-minimal) 2- or 8-byte length."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if masked else 0
    if wide == 2 or n > 0xFFFF:
        header = struct.pack("!BBQ", first, bit | 127, n)
    elif wide == 1 or n > 125:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = bytes((first, bit | n))
    if not masked:
        return header + payload
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


CLOSE_CODES = st.sampled_from(
    [
        1000,
        1001,
        1002,
        1003,
        1004,
        1005,
        1006,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1015,
        1016,
        999,
        2999,
        3000,
        4999,
        5000,
        0,
    ]
)


@st.composite
def payloads(draw: st.DrawFn, opcode: int) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "close", "big"]))
    if kind == "text":
        return draw(st.text(max_size=40)).encode("utf-8")
    if kind == "close" or (opcode == 0x8 and draw(st.booleans())):
        code = draw(CLOSE_CODES)
        reason = draw(st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=6)))
        return struct.pack("!H", code) + reason
    if kind == "big":
        return draw(st.binary(min_size=120, max_size=300))
    return draw(st.binary(max_size=30))


@st.composite
def frames(draw: st.DrawFn, client: bool) -> bytes:
    """One frame, sometimes wrong on purpose, or noise."""
    if draw(st.integers(0, 15)) == 0:
        return draw(st.binary(min_size=1, max_size=12))  # noise
    opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF]))
    wrong = draw(st.integers(0, 4)) == 0
    return build_frame(
        draw(payloads(opcode)),
        opcode,
        fin=draw(st.booleans()) if draw(st.booleans()) else True,
        rsv=draw(st.integers(1, 7)) if wrong and draw(st.booleans()) else 0,
        masked=(not client) != (wrong and draw(st.booleans())),
        key=draw(st.binary(min_size=4, max_size=4)),
        wide=draw(st.sampled_from([0, 0, 0, 0, 1, 2])),
    )


@st.composite
def messages(draw: st.DrawFn, client: bool) -> bytes:
    """A well-formed message in 1-4 fragments, control frames between them."""
    text = draw(st.booleans())
    body = draw(st.text(max_size=60)).encode("utf-8") if text else draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False)]
    out = []
    for index, piece in enumerate(pieces):
        opcode = (0x1 if text else 0x2) if index == 0 else 0x0
        out.append(
            build_frame(
                piece,
                opcode,
                fin=index == len(pieces) - 1,
                rsv=0,
                masked=not client,
                key=draw(st.binary(min_size=4, max_size=4)),
                wide=draw(st.sampled_from([0, 0, 0, 1, 2])) if len(piece) > 125 else 0,
            )
        )
        if draw(st.integers(0, 3)) == 0:
            control = draw(st.sampled_from([0x9, 0xA]))
            payload = draw(st.binary(max_size=125))
            out.append(
                build_frame(
                    payload,
                    control,
                    fin=True,
                    rsv=0,
                    masked=not client,
                    key=draw(st.binary(min_size=4, max_size=4)),
                    wide=0,
                )
            )
    return b"".join(out)


@st.composite
def streams(draw: st.DrawFn, client: bool) -> bytes:
    """Mostly well-formed messages, with a wrong frame (or noise) here and there."""
    items = draw(
        st.lists(st.one_of(messages(client), messages(client), frames(client)), max_size=10)
    )
    return b"".join(items)


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bool, list[bytes]]:
    client = draw(st.booleans())
    stream = draw(streams(client))
    assume(b"\x03\xf6" not in stream)  # 1014: see the module docstring
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = []
    last = 0
    for cut in [*cuts, len(stream)]:
        chunks.append(stream[last:cut])
        last = cut
    return client, [chunk for chunk in chunks if chunk]


def run_both(client: bool, chunks: list[bytes]) -> None:
    reference = WsprotoReference(client)
    mine = SockerReader(client)
    for index, chunk in enumerate(chunks):
        expected = reference.feed(chunk)
        got = mine.feed(chunk)
        assert got == expected, (index, chunks)


@SETTINGS
@given(split_streams())
def test_the_reader_decodes_what_wsproto_decodes(case: tuple[bool, list[bytes]]) -> None:
    client, chunks = case
    run_both(client, chunks)


@SETTINGS
@given(split_streams(), st.integers(1, 7))
def test_the_same_stream_byte_by_byte(case: tuple[bool, list[bytes]], step: int) -> None:
    client, chunks = case
    stream = b"".join(chunks)
    run_both(client, [stream[i : i + step] for i in range(0, len(stream), step)])


def test_known_cases() -> None:
    key = b"\x01\x02\x03\x04"

    def masked(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
        return build_frame(payload, opcode, fin=fin, rsv=0, masked=True, key=key, wide=0)

    cases = [
        masked(b"hello"),
        masked("héllo".encode(), 0x1),
        masked(b"\xff", 0x1),  # invalid UTF-8: 1007
        masked("é".encode()[:1], 0x1, fin=False) + masked("é".encode()[1:], 0x0),
        masked(b"\xed\xa0\x80", 0x1),  # a surrogate: 1007
        masked(b"a", fin=False) + masked(b"b", 0x9) + masked(b"c", 0x0),
        masked(b"a", 0x0),  # continuation with no message: 1002
        masked(b"a", fin=False) + masked(b"b"),  # a new message inside one: 1002
        masked(struct.pack("!H", 1000) + b"bye", 0x8) + masked(b"after"),
        masked(b"\x03", 0x8),  # a 1-byte close payload: 1002
        masked(struct.pack("!H", 1000) + b"\xff", 0x8),  # reason not UTF-8: 1007
        masked(b"x" * 70000),
        build_frame(b"r", 0x2, fin=True, rsv=4, masked=True, key=key, wide=0),  # RSV1
        build_frame(b"r", 0x2, fin=True, rsv=1, masked=True, key=key, wide=0),  # RSV3
        build_frame(b"u", 0x2, fin=True, rsv=0, masked=False, key=key, wide=0),  # unmasked
        build_frame(b"c", 0x9, fin=False, rsv=0, masked=True, key=key, wide=0),
        build_frame(b"x" * 200, 0x2, fin=True, rsv=0, masked=True, key=key, wide=2),
        build_frame(b"x" * 10, 0x2, fin=True, rsv=0, masked=True, key=key, wide=1),
    ]
    for stream in cases:
        for step in (1, 2, 3, 7, len(stream)):
            run_both(False, [stream[i : i + step] for i in range(0, len(stream), step)])


def test_close_code_1014_is_accepted() -> None:
    reader = FrameReader(client=True, max_size=None, max_fragments=16)
    events = reader.feed(b"\x88\x04" + struct.pack("!H", 1014) + b"gw")
    assert events == [socker_reader.PeerClose(1014, "gw")]
    for code in (1004, 1005, 1006, 1015, 1016, 2999):
        reader = FrameReader(client=True, max_size=None, max_fragments=16)
        [event] = reader.feed(b"\x88\x02" + struct.pack("!H", code))
        assert isinstance(event, socker_reader.Failed) and event.code == 1002, code
