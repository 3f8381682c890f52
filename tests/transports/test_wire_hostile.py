"""The wire's decisions behind fairness, lingering close and max_connections, sans-I/O:
`frames_per_turn` / `input_pending` / `receive_pending`, `linger`, `refuse_busy`."""

from __future__ import annotations

import logging
import os

import pytest

from socker_core import Connection, Flow, LocalProtocolError
from socker_transports.wire import HandshakeFailed, Options, Wire
from tests.transports.rawpeer import frame, upgrade_request

MiB = 1024 * 1024


def echo_flow() -> Flow:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    return flow


def async_flow() -> Flow:
    flow = Flow("slow")

    @flow.step
    async def slow(conn: Connection, message: bytes) -> bool:
        return False

    return flow


def opened(flow: Flow, **options: object) -> Wire:
    wire = Wire.server(flow, 0.0, Options(**options))  # type: ignore[arg-type]
    wire.receive_data(upgrade_request(80, "/"), 0.0)
    assert wire.data_to_send().startswith(b"HTTP/1.1 101")
    return wire


def echoed(wire: Wire) -> int:
    """How many 1-byte echo frames the wire has written since the last call."""
    return len(wire.data_to_send()) // 3  # unmasked header (2) + payload (1)


def test_a_read_is_handled_frames_per_turn_at_a_time() -> None:
    wire = opened(echo_flow(), frames_per_turn=64)
    wire.receive_data(frame(b"x") * 1000, 1.0)
    assert echoed(wire) == 64
    assert wire.input_pending and not wire.wants_data  # nothing new is read meanwhile
    turns = 1
    total = 64
    while wire.input_pending:
        wire.receive_pending(1.0)
        total += echoed(wire)
        turns += 1
        assert turns < 100
    assert total == 1000
    assert turns == 16  # 1000 / 64, rounded up (the last turn finds the rest)
    assert wire.wants_data and not wire.input_pending
    wire.receive_pending(1.0)  # nothing pending: a no-op
    assert echoed(wire) == 0


def test_without_a_budget_a_read_is_handled_at_once() -> None:
    wire = opened(echo_flow(), frames_per_turn=None)
    wire.receive_data(frame(b"x") * 1000, 1.0)
    assert echoed(wire) == 1000
    assert not wire.input_pending and wire.wants_data


def test_control_frames_count_against_the_budget() -> None:
    wire = opened(echo_flow(), frames_per_turn=10)
    wire.receive_data(frame(b"p", 0x9) * 25, 1.0)  # pings: answered with pongs
    assert len(wire.data_to_send()) == 10 * 3
    assert wire.input_pending


def test_pending_input_waits_while_a_handler_is_busy() -> None:
    wire = opened(async_flow(), frames_per_turn=4, max_queue=3)
    wire.receive_data(frame(b"x") * 40, 1.0)
    # The first message is awaited, the next ones queue for the flow (max_queue);
    # once it is full the pending input is no longer handed over: the turns stop
    # (nothing held grows past one turn's frames) until the handler is done.
    for _ in range(40):
        if not wire.input_pending:
            break
        wire.receive_pending(1.0)
    assert not wire.input_pending and not wire.wants_data
    awaits = [e for e in wire.events() if type(e).__name__ == "Await"]
    assert len(awaits) == 1
    awaits[0].awaitable.close()  # type: ignore[attr-defined]


def test_linger_after_an_http_error_and_a_close_frame() -> None:
    wire = Wire.server(echo_flow(), 0.0, Options(open_timeout=1.0))
    wire.receive_data(b"GET / HT", 0.0)  # a trickle
    assert wire.linger is None  # not over yet
    wire.tick(1.0)
    assert wire.data_to_send().startswith(b"HTTP/1.1 408")
    assert wire.should_close_transport and wire.linger == (2.0, 1 * MiB)

    wire = opened(echo_flow(), linger_timeout=0.5, linger_bytes=100)
    wire.receive_data(frame(b"x", masked=False), 1.0)  # protocol error: 1002, then the end
    # After a protocol error the bound is close_timeout (10 s by default), so the
    # peer's close reply is read (tests/transports/test_fail_drain.py).
    assert wire.should_close_transport and wire.linger == (10.0, 100)

    wire = opened(echo_flow(), linger_timeout=0.5, linger_bytes=100)
    wire.receive_data(frame(b"\x03\xe8", opcode=0x8), 1.0)  # the peer closes: echoed, the end
    assert wire.should_close_transport and wire.linger == (0.5, 100)


@pytest.mark.parametrize("how", ["eof", "abort", "disabled", "overflow", "close timeout"])
def test_no_linger(how: str) -> None:
    options: dict[str, object] = {"close_timeout": 1.0}
    if how == "disabled":
        options["linger_timeout"] = None
    if how == "overflow":
        options["max_send_buffer"] = 1000
    wire = opened(echo_flow(), **options)
    if how == "eof":
        wire.receive_data(None, 1.0)
    elif how == "abort":
        wire.abort(1.0)
    elif how == "disabled":
        wire.receive_data(frame(b"\x03\xe8", opcode=0x8), 1.0)  # the peer's close: the end
    elif how == "overflow":
        wire.receive_data(frame(os.urandom(2000)), 1.0)  # echoed: past max_send_buffer
    else:
        wire.close(1000, "", 1.0)
        wire.tick(2.5)  # no answer within close_timeout
    assert wire.should_close_transport
    assert wire.linger is None


def test_refuse_busy_answers_503_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="socker")
    wire = Wire.server(echo_flow(), 0.0, peer="127.0.0.1:1")
    wire.refuse_busy(0.0)
    response = wire.data_to_send()
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in response
    assert wire.should_close_transport and wire.handshake_status == 503
    assert [type(e) for e in wire.events()] == [HandshakeFailed]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "server 127.0.0.1:1: refused (503): server at max_connections")
    ]
    assert caplog.records[0].exc_info is None
    with pytest.raises(LocalProtocolError):
        wire.refuse_busy(0.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"frames_per_turn": 0},
        {"linger_timeout": 0},
        {"linger_bytes": -1},
        {"max_connections": 0},
    ],
)
def test_new_options_are_validated(bad: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        Options(**bad)  # type: ignore[arg-type]
