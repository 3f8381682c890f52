"""Resume in the core: the DETACHED states, the replay ledger, the session store
and the test kit's simulated drops, all on the fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socker_core import (
    CLOSE_CODES,
    Claimed,
    CloseCode,
    Flow,
    LocalProtocolError,
    MemorySessionStore,
    Refused,
    ReplayBuffer,
    ResumeSession,
    Send,
    State,
    Stepper,
    reconnect_delay,
)
from socker_core._state import CALLS, TRANSITIONS
from socker_core.testing import run_pair
from tests.resume_flows import expected, make_pair

DROP_TIMES = [0.001 + 0.01 * i for i in range(14)] + [0.0105, 0.0205]


@pytest.mark.parametrize("drop_at", DROP_TIMES)
def test_one_drop_anywhere_loses_nothing_and_repeats_nothing(drop_at: float) -> None:
    server, client, srec, crec = make_pair()
    transcript = run_pair(server, client, latency=0.01, drops=[(drop_at, drop_at + 2.0)])
    assert transcript.outcome == "closed"
    assert srec.seen == expected("server")
    assert crec.seen == expected("client")
    assert (srec.opened, crec.opened) == (1, 1)
    assert srec.closed == [1000] and crec.closed == [1000]


def test_five_consecutive_drops() -> None:
    server, client, srec, crec = make_pair()
    # each drop resumes before the next; with latency 0.07 they land in every step
    drops = [(0.004 + 0.6 * i, 0.5 + 0.6 * i) for i in range(5)]
    transcript = run_pair(server, client, latency=0.07, drops=drops)
    assert transcript.outcome == "closed"
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.detached == srec.resumed >= 1
    assert srec.closed == [1000] and crec.closed == [1000]
    assert transcript.entries(kind="lost"), "the drops must have lost messages in flight"


def test_window_expiry_ends_the_session_once_with_1006() -> None:
    server, client, srec, crec = make_pair(window=1.0)
    transcript = run_pair(server, client, latency=0.01, drops=[(0.015, 5.0)])
    assert transcript.outcome == "closed"
    assert srec.closed == [1006] and crec.closed == [1006]
    assert transcript.stepper("server").close_reason == "resume window expired"
    assert srec.resumed == 0


def test_step_timers_keep_running_while_detached() -> None:
    flow = Flow("t", resume_window=30.0)
    flow.add(lambda conn, m: False, name="wait", timeout=2.0)
    stepper = Stepper(flow, replay=ReplayBuffer())
    stepper.open(0.0)
    stepper.detach(1.0, 30.0)
    assert stepper.phase is State.DETACHED
    assert stepper.next_deadline == 2.0
    events = stepper.tick(2.0)
    assert stepper.is_closed and stepper.close_code == CloseCode.STEP_TIMEOUT
    assert not any(isinstance(e, Send) for e in events)


def test_sends_while_detached_are_kept_then_overflow_ends_with_4413() -> None:
    flow = Flow("t", resume_window=30.0, max_resume_buffer=10)
    flow.add(lambda conn, m: False, name="wait")
    closes: list[int | None] = []
    flow.on_close(lambda conn: closes.append(conn.close_code))
    stepper = Stepper(flow, replay=ReplayBuffer(10))
    stepper.open(0.0)
    stepper.detach(0.0, 30.0)
    assert stepper.send(b"12345", 0.1) == []  # kept, not sent
    assert stepper.replay is not None and len(stepper.replay) == 1
    stepper.send(b"123456", 0.2)  # 11 bytes: over the bound
    assert stepper.is_closed and closes == [CloseCode.RESUME_BUFFER_OVERFLOW]


def test_overflow_while_connected_ends_at_the_drop() -> None:
    flow = Flow("t", resume_window=30.0)
    flow.add(lambda conn, m: False, name="wait")
    stepper = Stepper(flow, replay=ReplayBuffer(4))
    stepper.open(0.0)
    stepper.send(b"12345", 0.0)  # sent; the ledger cannot keep it
    stepper.detach(1.0, 30.0)
    assert stepper.is_closed and stepper.close_code == CloseCode.RESUME_BUFFER_OVERFLOW


def test_without_a_replay_buffer_detach_is_a_plain_close() -> None:
    flow = Flow("t", resume_window=30.0)
    flow.add(lambda conn, m: False, name="wait")
    stepper = Stepper(flow)
    stepper.open(0.0)
    stepper.detach(1.0, 30.0)
    assert stepper.is_closed and stepper.close_code == 1006


def test_receive_while_detached_is_local_misuse() -> None:
    flow = Flow("t", resume_window=30.0)
    flow.add(lambda conn, m: False, name="wait")
    stepper = Stepper(flow, replay=ReplayBuffer())
    stepper.open(0.0)
    stepper.detach(0.0, 30.0)
    with pytest.raises(LocalProtocolError):
        stepper.receive(b"x", 0.0)


def test_an_async_handler_finishing_while_detached_applies() -> None:
    flow = Flow("t", resume_window=30.0)

    async def slow(conn: object, message: bytes) -> bool:
        return True

    flow.add(slow, name="slow")  # type: ignore[arg-type]
    flow.add(lambda conn, m: False, name="next")
    stepper = Stepper(flow, replay=ReplayBuffer())
    stepper.open(0.0)
    (await_event,) = [e for e in stepper.receive(b"x", 0.0) if type(e).__name__ == "Await"]
    stepper.detach(0.1, 30.0)
    assert stepper.phase is State.DETACHED_AWAITING
    await_event.awaitable.close()  # type: ignore[attr-defined]
    stepper.resume(await_event.token, True, 0.2)
    assert stepper.phase is State.DETACHED and stepper.step == "next"
    stepper.attach(0.3)
    assert stepper.phase is State.OPEN


def test_state_table_covers_detached_states() -> None:
    for state in (State.DETACHED, State.DETACHED_AWAITING):
        assert any(key[0] is state for key in TRANSITIONS)
        for call in ("tick", "send", "close", "transport_closed", "attach"):
            assert state in CALLS[call]


def test_replay_buffer_counts_acks_and_replays() -> None:
    buffer = ReplayBuffer(limit=100)
    for i in range(5):
        assert buffer.retain(bytes([i]))
    assert buffer.ack(2) and len(buffer) == 3
    assert buffer.replay_after(3) == [b"\x03", b"\x04"]
    assert buffer.replay_after(1) is None  # behind what was acknowledged
    assert buffer.replay_after(9) is None  # more than was sent
    assert not buffer.ack(9)


def test_replay_buffer_overflow_forgets_the_oldest() -> None:
    buffer = ReplayBuffer(limit=4)
    buffer.retain(b"ab")
    buffer.retain(b"cd")
    assert not buffer.retain(b"e")  # 5 bytes > 4
    assert buffer.overflowed and buffer.retained_bytes <= 4
    assert buffer.replay_after(0) is None
    assert buffer.replay_after(1) == [b"cd", b"e"]


def _session(flow: Flow, token: str = "t1", route: str = "/") -> ResumeSession:
    stepper = Stepper(flow, replay=ReplayBuffer())
    stepper.open(0.0)
    return ResumeSession(token, route, stepper, 30.0)


def test_store_tokens_are_single_use_and_bound_to_route_and_flow() -> None:
    flow = Flow("a", resume_window=30.0)
    flow.add(lambda conn, m: False, name="wait")
    other = Flow("b", resume_window=30.0)
    other.add(lambda conn, m: False, name="wait")
    store = MemorySessionStore()
    session = _session(flow)
    store.add(session, 0.0)
    assert store.claim("nope", "/", flow, "x", 0.0) == Refused(4410, "unknown session")
    assert isinstance(store.claim("t1", "/other", flow, "x", 0.0), Refused)
    assert store.claim("t1", "/other", flow, "x", 0.0).code == 4403  # type: ignore[union-attr]
    assert store.claim("t1", "/", other, "x", 0.0).code == 4412  # type: ignore[union-attr]
    claimed = store.claim("t1", "/", flow, "t2", 1.0)
    assert isinstance(claimed, Claimed) and claimed.session.token == "t2"
    # Until the client shows it got t2, t1 still works (a drop mid-resume)...
    again = store.claim("t1", "/", flow, "t3", 1.0)
    assert isinstance(again, Claimed) and session.token == "t3"
    assert store.claim("t2", "/", flow, "x", 1.0).code == 4403  # type: ignore[union-attr]
    store.confirm(session, 1.5)  # ...and once it did, t1 is spent for good.
    assert store.claim("t1", "/", flow, "t4", 1.5).code == 4403  # type: ignore[union-attr]
    store.end(session, 1006, 2.0)
    assert store.claim("t3", "/", flow, "t4", 2.0).code == 4410  # type: ignore[union-attr]
    assert len(store) == 0
    assert "t2" not in repr(session)


def test_reconnect_delay_bounds() -> None:
    assert reconnect_delay(0, 0.0) == pytest.approx(0.025)
    assert reconnect_delay(0, 1.0) == pytest.approx(0.05)
    assert reconnect_delay(50, 1.0) == 5.0
    assert reconnect_delay(50, 0.0) == 2.5


def test_codes_are_documented() -> None:
    for code in (4403, 4409, 4410, 4412, 4413):
        assert code in CLOSE_CODES


@settings(max_examples=150, deadline=None)
@given(
    latency=st.sampled_from([0.0, 0.003, 0.01, 0.05]),
    gaps=st.lists(st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 0.5)), min_size=1, max_size=6),
)
def test_any_drop_schedule_delivers_each_message_once_in_order(
    latency: float, gaps: list[tuple[float, float]]
) -> None:
    """Drops at arbitrary times (within the window): the flow completes, every
    handler sees every message exactly once and in order, hooks balance."""
    drops, now = [], 0.0
    for wait, outage in gaps:
        now += wait
        drops.append((now, now + outage))
        now += outage + 1e-6
    server, client, srec, crec = make_pair(window=30.0)
    transcript = run_pair(server, client, latency=latency, drops=drops)
    assert transcript.outcome == "closed", transcript.log()
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.closed == [1000] and crec.closed == [1000]
    assert (srec.opened, crec.opened) == (1, 1)
    assert srec.detached == srec.resumed and crec.detached == crec.resumed


def test_the_transcript_shows_the_drop_and_the_replay() -> None:
    server, client, _, _ = make_pair()
    transcript = run_pair(server, client, latency=0.01, drops=[(0.025, 1.0)])
    table = transcript.table(kinds=["lost", "detach", "resumed", "replay"])
    assert "loses `b'c1-0'` (transport dropped)" in table
    assert "detached (transport lost)" in table
    assert "resumed, replaying 3" in table and "replays `b'c1-2'`" in table
