"""Helpers for the sans-I/O `Wire` tests: hand-built frames and requests, and
wsproto in the other role as the peer. No sockets, no clock: `now` is a number."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Request
from wsproto.frame_protocol import FrameDecoder, Opcode

from socker_core import Close, Closed, Connection, Flow, Goto
from socker_transports.wire import Options, Wire

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(
    path: str = "/",
    *,
    key: str | None = KEY,
    version: str | None = "13",
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: example.test", "Upgrade: websocket"]
    lines.append("Connection: Upgrade")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(
    payload: bytes = b"",
    opcode: int = 0x2,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One frame, built by hand (so it can be wrong on purpose)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None = 1000, reason: bytes = b"", *, mask: bool = True) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(payload, 0x8, mask=mask)


def parse_frames(data: bytes, *, client: bool) -> list[tuple[Opcode, bytes, bool]]:
    """Decode what a Wire wrote: (opcode, payload, fin) per frame. `client` is the
    role of the *reader* (a client reads unmasked frames)."""
    decoder = FrameDecoder(client=client)
    decoder.receive_bytes(data)
    frames = []
    while True:
        parsed = decoder.process_buffer()
        if parsed is None:
            break
        frames.append((parsed.opcode, bytes(parsed.payload), parsed.message_finished))  # type: ignore[arg-type]
    return frames


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Record:
    """What a flow saw: messages, on_close calls and the close codes."""

    messages: list[bytes] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    opened: int = 0


def echo_flow(record: Record | None = None, *, name: str = "echo") -> Flow:
    """Echoes every message; records messages and on_close."""
    record = record if record is not None else Record()
    flow = Flow(name)

    @flow.on_open
    def opened(conn: Connection) -> None:
        record.opened += 1

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        record.messages.append(message)
        conn.send(message)
        return False

    @flow.on_close
    def closed(conn: Connection) -> None:
        record.closes.append((conn.close_code, conn.close_reason))

    return flow


def open_server(
    flow: Flow | None = None, now: float = 0.0, *, record: Record | None = None, **options: Any
) -> tuple[Wire, Record]:
    """A server Wire past a valid handshake (the 101 response already taken)."""
    record = record if record is not None else Record()
    wire = Wire.server(flow or echo_flow(record), now, Options(**options))
    wire.receive_data(upgrade_request(), now)
    response = wire.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 "), response
    wire.events()
    return wire, record


def open_client(
    flow: Flow | None = None, now: float = 0.0, *, record: Record | None = None, **options: Any
) -> tuple[Wire, WSConnection, Record]:
    """A client Wire past a handshake answered by a wsproto server."""
    record = record if record is not None else Record()
    wire = Wire.client(flow or echo_flow(record), "example.test", now, Options(**options))
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    request = next(server.events())
    assert isinstance(request, Request)
    wire.receive_data(server.send(AcceptConnection()), now)
    assert wire.is_open
    wire.events()
    return wire, server, record


def to_peer(wire: Wire, peer: WSConnection) -> list[Event]:
    """Move what the wire wrote into the wsproto peer; return the peer's events."""
    peer.receive_data(bytes(wire.data_to_send()))
    return list(peer.events())


def closed_events(events: Iterable[object]) -> list[Closed]:
    return [e for e in events if isinstance(e, Closed)]


# -- the fuzzed flow (tests/transports/test_wire_fuzz.py and fuzz/fuzz_wire.py) ---------


@dataclass
class Tally:
    opened: int = 0
    closed: int = 0
    messages: int = 0
    closed_events: list[Closed] = field(default_factory=list)


async def pending_awaitable() -> object:  # pragma: no cover - closed, never awaited
    return None


def make_fuzz_flow(tally: Tally) -> Flow:
    """The flow both the hypothesis suite and the atheris harness fuzz the wire with.

    Two steps: an echo that sometimes goes async, sometimes advances, sometimes
    closes or raises (depending on the first byte); then a staying step."""
    flow = Flow("fuzz")

    @flow.on_open
    def opened(conn: Connection) -> None:
        tally.opened += 1

    @flow.step(timeout=30.0)
    def first(conn: Connection, message: bytes) -> Any:
        tally.messages += 1
        kind = message[0] % 8 if message else 0
        if kind == 0:
            conn.send(message)
            return False
        if kind == 1:
            return pending_awaitable()
        if kind == 2:
            return True
        if kind == 3:
            return Close(4000, "fuzz close")
        if kind == 4:
            raise ValueError("handler error")
        if kind == 5:
            return Goto("second")
        conn.send(message * 3)
        return None

    @flow.step
    def second(conn: Connection, message: bytes) -> Any:
        tally.messages += 1
        if message[:1] == b"\x00":
            return True  # completes the flow
        return pending_awaitable() if message[:1] == b"\x01" else False

    @flow.on_close
    def closed(conn: Connection) -> None:
        tally.closed += 1

    return flow
