"""Property tests: arbitrary bytes and frame sequences against a server and a
client Wire, before and after the handshake, cut at arbitrary read boundaries,
with random ticks, application sends/closes and async handler outcomes.

Whatever the peer sends:
- nothing escapes `receive_data`, `tick`, `events`, `data_to_send`;
- a deadline handled by `tick` is consumed (no busy loop);
- a driver that takes the output and settles every await is never stuck:
  the wire wants data unless the transport should close;
- after EOF the connection is finished, its close code is in socker's table (or
  a valid code the peer chose), and on_close ran exactly once iff the flow opened.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Awaitable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from socker_core import (
    CLOSE_CODES,
    Await,
    Close,
    CloseCode,
    Closed,
    ConnectionClosedError,
    Goto,
)
from socker_transports.wire import (
    Accept,
    AwaitHandshake,
    HandshakeRequest,
    Options,
    Phase,
    Reject,
    Wire,
)
from tests.transports.wire_peer import Tally, frame, make_fuzz_flow, upgrade_request

#: SOCKER_FUZZ_EXAMPLES=20000 for a long local run; the default keeps `make test` fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("SOCKER_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def peer_valid(code: int) -> bool:
    return 1000 <= code <= 1014 or 3000 <= code <= 4999


# -- the driver ----------------------------------------------------------------------------


class Driver:
    """A minimal, strict driver around one Wire, checking invariants as it goes."""

    def __init__(self, wire: Wire, tally: Tally, results: st.DataObject) -> None:
        self.wire = wire
        self.tally = tally
        self.results = results
        self.now = 0.0
        self.pending: list[Await] = []
        self.hook_pending = False

    def events(self) -> None:
        for event in self.wire.events():
            if isinstance(event, Await):
                event.awaitable.close()  # type: ignore[attr-defined]
                if not event.step.startswith("<on_close"):
                    self.pending.append(event)
            elif isinstance(event, AwaitHandshake):
                event.awaitable.close()  # type: ignore[attr-defined]
                self.hook_pending = True
            elif isinstance(event, Closed):
                self.tally.closed_events.append(event)

    def feed(self, chunk: bytes) -> None:
        self.wire.receive_data(chunk, self.now)
        self.events()

    def tick(self, dt: float) -> None:
        self.now += dt
        deadline = self.wire.next_deadline
        if deadline is not None and deadline <= self.now:
            self.wire.tick(self.now)
            self.events()
            following = self.wire.next_deadline
            assert following is None or following > self.now, "tick left a deadline due"

    def settle_one(self) -> None:
        wire = self.wire
        if self.hook_pending:
            self.hook_pending = False
            answer = self.results.draw(
                st.sampled_from([None, Accept(), Reject(403), RuntimeError("hook")])
            )
            wire.finish_handshake(answer, self.now)
        elif self.pending:
            pending = self.pending.pop(0)
            outcome = self.results.draw(
                st.sampled_from([True, False, None, Goto("first"), Close(1000), "bad", "raise"])
            )
            if outcome == "raise":
                wire.resume_error(pending.token, ValueError("async"), self.now)
            else:
                wire.resume(pending.token, outcome, self.now)
        self.events()

    def app(self, action: tuple[str, Any]) -> None:
        kind, value = action
        wire = self.wire
        if kind == "send":
            if wire.is_open:
                wire.send(value, self.now)
            else:
                try:
                    wire.send(value, self.now)
                except ConnectionClosedError:
                    pass
                else:  # pragma: no cover - the property fails here
                    raise AssertionError("send succeeded on a wire that is not open")
        elif kind == "close":
            wire.close(value, "app", self.now)
        elif kind == "take":
            wire.data_to_send()
        self.events()

    def settle_all(self) -> None:
        """What any driver does: take the output, settle every await."""
        for _ in range(200):
            self.wire.data_to_send()
            if not (self.pending or self.hook_pending):
                break
            self.settle_one()
        self.wire.data_to_send()
        assert self.wire.wants_data or self.wire.should_close_transport, (
            "stuck: no backpressure left, yet the wire wants no data",
            self.wire.phase,
        )

    def finish(self) -> None:
        wire = self.wire
        self.settle_all()
        wire.receive_data(None, self.now)
        self.events()
        self.settle_all()
        wire.tick(self.now + 1e6)
        self.events()
        assert wire.finished and wire.should_close_transport
        assert wire.phase is Phase.DONE
        assert wire.next_deadline is None
        code = wire.close_code
        assert code is not None
        assert code in CLOSE_CODES or peer_valid(code), code
        tally = self.tally
        assert tally.opened <= 1
        assert tally.closed == tally.opened, (tally.opened, tally.closed)
        assert len(tally.closed_events) == tally.opened
        if tally.closed_events:
            assert tally.closed_events[0].code == code
        note(f"opened={tally.opened} code={code} handshake={wire.handshake_status}")
        note(f"messages handled: {min(tally.messages, 3)}+")
        # 0 (no answer, or not HTTP), 101, or the status of a refusal as the server
        # sent it (anything but a 101 refuses: a 2xx, a redirect's 302, an interim 1xx).
        assert wire.result.handshake_status == 0 or 100 <= wire.result.handshake_status < 600


# -- strategies ------------------------------------------------------------------------------

OPCODES = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xF])
CLOSE_CODES_ON_WIRE = st.sampled_from(
    [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1011, 1015, 2000, 3000, 4999, 5000, 999]
)


@st.composite
def data_message(draw: st.DrawFn, *, mask: bool) -> bytes:
    """A valid binary message: one frame, or fragments with control frames between."""
    payload = draw(st.binary(max_size=300))
    pieces = draw(st.integers(1, 3))
    if pieces == 1 or len(payload) < 2:
        return frame(payload, 0x2, mask=mask)
    cut = draw(st.integers(0, len(payload)))
    out = frame(payload[:cut], 0x2, fin=False, mask=mask)
    if draw(st.booleans()):
        out += frame(draw(st.binary(max_size=10)), draw(st.sampled_from([0x9, 0xA])), mask=mask)
    if pieces == 3:
        out += frame(b"", 0x0, fin=False, mask=mask)
    return out + frame(payload[cut:], 0x0, mask=mask)


@st.composite
def frames(draw: st.DrawFn, *, mask: bool) -> bytes:
    kind = draw(st.integers(0, 19))
    if kind < 12:
        return draw(data_message(mask=mask))
    if kind < 14:  # ping / pong / text
        opcode = draw(st.sampled_from([0x9, 0xA, 0x1]))
        payload = draw(st.binary(max_size=20)) if opcode != 0x1 else "✓ok".encode()
        return frame(payload, opcode, mask=mask)
    if kind < 16:  # a close frame, maybe malformed
        if draw(st.booleans()):
            return frame(b"", 0x8, mask=mask)
        code = draw(CLOSE_CODES_ON_WIRE)
        reason = draw(st.sampled_from([b"", b"bye", b"\xff\xfe", "✓".encode()]))
        return frame(struct.pack("!H", code) + reason, 0x8, mask=mask)
    if kind == 16:  # raw garbage
        return draw(st.binary(max_size=20))
    # A frame that is wrong in some way (or by luck right).
    payload = draw(st.binary(max_size=300))
    opcode = draw(OPCODES)
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 1, 2, 4]))
    masked = mask if draw(st.integers(0, 3)) else not mask
    length = None if draw(st.booleans()) else draw(st.integers(0, 2**31))
    return frame(payload, opcode, fin=fin, mask=masked, rsv=rsv, length=length)


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)


def mutate(data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in mutations:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


ACTIONS = st.one_of(
    st.tuples(st.just("tick"), st.floats(0.0, 40.0)),
    st.tuples(st.just("settle"), st.none()),
    st.tuples(st.just("send"), st.binary(max_size=50)),
    st.tuples(st.just("take"), st.none()),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
    st.tuples(st.just("settle"), st.none()),
    st.tuples(st.just("close"), st.sampled_from([1000, 1001, 4000])),
)


def options_strategy() -> st.SearchStrategy[Options]:
    return st.builds(
        Options,
        max_size=st.sampled_from([None, 1, 100, 1000]),
        max_queue=st.integers(1, 3),
        open_timeout=st.sampled_from([None, 5.0]),
        close_timeout=st.sampled_from([None, 2.0]),
        ping_interval=st.sampled_from([None, 3.0]),
        ping_timeout=st.sampled_from([None, 1.0]),
        max_line=st.sampled_from([256, 8192]),
        max_headers=st.sampled_from([5, 128]),
        accept_text=st.booleans(),
        write_limit=st.sampled_from([10, 65536]),
        max_send_buffer=st.sampled_from([300, 16 * 1024 * 1024]),
    )


def run(driver: Driver, data: bytes, cuts: list[int], actions: list[tuple[str, Any]]) -> None:
    chunks = chunked(data, cuts)
    for i, chunk in enumerate(chunks):
        if driver.wire.should_close_transport:
            break
        if not driver.wire.wants_data:
            driver.settle_all()
            if driver.wire.should_close_transport:
                break
        driver.feed(chunk)
        if i < len(actions):
            kind, value = actions[i]
            if kind == "tick":
                driver.tick(value)
            elif kind == "settle":
                driver.settle_one()
            else:
                driver.app(actions[i])
    driver.finish()


def hook_for(choice: int) -> Any:
    if choice == 0:
        return None
    if choice == 1:
        return lambda request: Accept(state={"x": 1})

    async def later() -> Accept:  # pragma: no cover - closed, never awaited
        return Accept()

    def async_hook(request: HandshakeRequest) -> Awaitable[Accept]:
        return later()

    return async_hook


# -- properties --------------------------------------------------------------------------------


@SETTINGS
@given(
    garbage=st.binary(max_size=400),
    prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", upgrade_request()]),
    mutations=MUTATIONS,
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    actions=st.lists(ACTIONS, max_size=8),
    options=options_strategy(),
    hook=st.integers(0, 2),
    results=st.data(),
)
def test_server_before_the_handshake(
    garbage: bytes,
    prefix: bytes,
    mutations: list[tuple[int, int]],
    cuts: list[int],
    actions: list[tuple[str, Any]],
    options: Options,
    hook: int,
    results: st.DataObject,
) -> None:
    tally = Tally()
    wire = Wire.server(make_fuzz_flow(tally), 0.0, options, handshake_hook=hook_for(hook))
    run(Driver(wire, tally, results), mutate(prefix, mutations) + garbage, cuts, actions)


@SETTINGS
@given(
    body=st.lists(frames(mask=True), max_size=12),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
    actions=st.lists(ACTIONS, max_size=12),
    options=options_strategy(),
    hook=st.integers(0, 2),
    results=st.data(),
)
def test_server_after_the_handshake(
    body: list[bytes],
    cuts: list[int],
    actions: list[tuple[str, Any]],
    options: Options,
    hook: int,
    results: st.DataObject,
) -> None:
    tally = Tally()
    wire = Wire.server(make_fuzz_flow(tally), 0.0, options, handshake_hook=hook_for(hook))
    run(Driver(wire, tally, results), upgrade_request() + b"".join(body), cuts, actions)


def _client_wire(tally: Tally, options: Options) -> tuple[Wire, WSConnection]:
    wire = Wire.client(make_fuzz_flow(tally), "fuzz.test", 0.0, options)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    assert isinstance(next(server.events()), Request)
    return wire, server


@pytest.mark.parametrize("status", [111, 201, 302, 403, 503])
def test_a_client_reports_the_status_of_a_refusal_whatever_it_is(status: int) -> None:
    # Found by the fuzzer below: a 101 mutated into a 201, then into a 111.
    tally = Tally()
    wire, _ = _client_wire(tally, Options())
    response = f"HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\n\r\n".encode()
    wire.receive_data(response, 1.0)
    wire.receive_data(None, 1.0)
    assert wire.finished and tally.opened == 0
    assert wire.result.handshake_status == status
    assert wire.result.code == CloseCode.ABNORMAL
    assert wire.result.reason == "server rejected the handshake"


@SETTINGS
@given(
    garbage=st.binary(max_size=100),
    mutations=MUTATIONS,
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    actions=st.lists(ACTIONS, max_size=8),
    options=options_strategy(),
    results=st.data(),
)
def test_client_before_the_handshake(
    garbage: bytes,
    mutations: list[tuple[int, int]],
    cuts: list[int],
    actions: list[tuple[str, Any]],
    options: Options,
    results: st.DataObject,
) -> None:
    tally = Tally()
    wire, server = _client_wire(tally, options)
    response = mutate(server.send(AcceptConnection()), mutations)
    run(Driver(wire, tally, results), response + garbage, cuts, actions)


@SETTINGS
@given(
    body=st.lists(frames(mask=False), max_size=12),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
    actions=st.lists(ACTIONS, max_size=12),
    options=options_strategy(),
    results=st.data(),
)
def test_client_after_the_handshake(
    body: list[bytes],
    cuts: list[int],
    actions: list[tuple[str, Any]],
    options: Options,
    results: st.DataObject,
) -> None:
    tally = Tally()
    wire, server = _client_wire(tally, options)
    response = server.send(AcceptConnection())
    run(Driver(wire, tally, results), response + b"".join(body), cuts, actions)
