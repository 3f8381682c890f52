"""socker_core.testing: run_pair, arun_pair, transcripts, fuzz_flow."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import trio

from socker_core import Close, Flow, Goto, Stepper
from socker_core.testing import (
    CLIENT,
    SERVER,
    Entry,
    FuzzFailure,
    FuzzOp,
    NeedsEventLoopError,
    Transcript,
    arun_pair,
    fuzz_flow,
    replay_fuzz,
    resolve,
    run_pair,
)

# -- the original README's game, literally --------------------------------------


def readme_server() -> Flow:
    """Server.go from the original README: four steps, the last one stays."""
    flow = Flow("server")

    @flow.step
    def connected(conn: Any, message: bytes) -> bool:
        conn.send(b"scene")  # send all buffered data
        return True

    @flow.step
    def handshake(conn: Any, message: bytes) -> bool:
        conn.send(b"offer")  # create the data channel, create and send the offer
        return True

    @flow.step
    def answer(conn: Any, message: bytes) -> bool:
        conn.state.remote = message  # set the remote description
        return True

    @flow.step
    def control(conn: Any, message: bytes) -> bool:
        return False

    return flow


def readme_client(*, speak_first: bool) -> Flow:
    """Client.go from the original README (three steps)."""
    flow = Flow("client")
    if speak_first:
        # The Go server could not speak first, so its example client said "hi".
        @flow.on_open
        def hi(conn: Any) -> None:
            conn.send(b"hi")

    @flow.step
    def scene(conn: Any, message: bytes) -> bool:
        conn.send(b"ready")  # create entities; send the webrtc connection request
        return True

    @flow.step
    def offer(conn: Any, message: bytes) -> bool:
        conn.send(b"answer")
        return True

    @flow.step
    def control(conn: Any, message: bytes) -> bool:
        return False

    return flow


README_TABLE = """\
| Server | Client |
|------|------|
| connection open | |
| step `connected` | |
| | connection open |
| | step `scene` |
| | sends `b'hi'` |
| sends `b'scene'` | |
| step `handshake` | |
| | sends `b'ready'` |
| | step `offer` |
| sends `b'offer'` | |
| step `answer` | |
| | sends `b'answer'` |
| | step `control` |
| step `control` | |
| stalled, waiting in `control` | |
| | stalled, waiting in `control` |"""


def test_run_pair_plays_the_original_readme_game_and_stalls_in_control() -> None:
    transcript = run_pair(readme_server(), readme_client(speak_first=True))
    assert transcript.steps(SERVER) == ["connected", "handshake", "answer", "control"]
    assert transcript.steps(CLIENT) == ["scene", "offer", "control"]
    assert transcript.sent(SERVER) == [b"scene", b"offer"]
    assert transcript.sent(CLIENT) == [b"hi", b"ready", b"answer"]
    assert transcript.received(SERVER) == [b"hi", b"ready", b"answer"]
    assert transcript.server.conn.state.remote == b"answer"
    # Both last steps stay forever, as in the README: the run ends, it does not hang.
    assert transcript.outcome == "stalled"
    assert transcript.stalled and not transcript.closed
    assert transcript.server_code is None and transcript.client_code is None
    assert transcript.table() == README_TABLE


def test_on_open_lets_the_server_speak_first() -> None:
    silent = run_pair(readme_server(), readme_client(speak_first=False))
    assert silent.sent(SERVER) == [] and silent.sent(CLIENT) == []  # the Go problem

    # The fix: on_open sends the scene, and the first step waits for the handshake.
    server = Flow("server")

    @server.on_open
    def scene(conn: Any) -> None:
        conn.send(b"scene")

    for step in readme_server().steps[1:]:
        server.add(step.handler, name=step.name)
    transcript = run_pair(server, readme_client(speak_first=False))
    first_send = transcript.entries(kind="send")[0]
    assert (first_send.side, first_send.payload) == (SERVER, b"scene")
    assert transcript.steps(SERVER)[-1] == "control"
    assert transcript.steps(CLIENT)[-1] == "control"


# -- completion, closes, timeouts ------------------------------------------------


def ping_server() -> Flow:
    flow = Flow("ping-server")

    @flow.on_open
    def hello(conn: Any) -> None:
        conn.send(b"hi|`x")

    @flow.step
    def wait(conn: Any, message: bytes) -> bool:
        return message == b"bye"

    return flow


def bye_client() -> Flow:
    flow = Flow("bye-client")

    @flow.step
    def greet(conn: Any, message: bytes) -> bool:
        conn.send(b"bye")
        return True

    @flow.step
    def done(conn: Any, message: bytes) -> bool:
        return False

    return flow


def test_a_completed_flow_closes_both_sides_with_1000() -> None:
    transcript = run_pair(ping_server(), bye_client(), latency=0.25, clock_start=10.0)
    assert transcript.outcome == "closed"
    assert transcript.close_of(SERVER) == (1000, "flow complete")
    assert transcript.close_of(CLIENT) == (1000, "flow complete")
    times = {(e.side, e.kind): e.time for e in transcript}
    assert times[(CLIENT, "recv")] == 10.25
    assert times[(SERVER, "recv")] == 10.5
    assert times[(SERVER, "close")] == 10.5
    assert times[(CLIENT, "closed")] == 10.75  # the close frame's trip
    assert times[(SERVER, "closed")] == 11.0  # ... and back
    assert transcript.server.is_closed and transcript.client.is_closed


def test_table_and_mermaid_render_and_escape() -> None:
    transcript = run_pair(ping_server(), bye_client())
    assert transcript.table() == "\n".join(
        [
            "| Server | Client |",
            "|------|------|",
            "| connection open | |",
            "| step `wait` | |",
            "| sends `b'hi\\|\\x60x'` | |",
            "| | connection open |",
            "| | step `greet` |",
            "| | sends `b'bye'` |",
            "| | step `done` |",
            "| flow complete after `wait` | |",
            "| closes 1000 'flow complete' | |",
            "| | closed 1000 'flow complete' |",
            "| closed 1000 'flow complete' | |",
        ]
    )
    assert transcript.mermaid() == "\n".join(
        [
            "sequenceDiagram",
            "    participant S as Server",
            "    participant C as Client",
            "    Note over S: connection open",
            "    Note over S: step wait",
            "    S->>C: b'hi|`x'",
            "    Note over C: connection open",
            "    Note over C: step greet",
            "    C->>S: b'bye'",
            "    Note over C: step done",
            "    Note over S: flow complete after wait",
            "    S--)C: closes 1000 'flow complete'",
            "    Note over C: closed 1000 'flow complete'",
            "    Note over S: closed 1000 'flow complete'",
        ]
    )
    only_sends = transcript.table(kinds={"send"}).splitlines()
    assert only_sends[2:] == ["| sends `b'hi\\|\\x60x'` | |", "| | sends `b'bye'` |"]


def test_mermaid_escapes_what_would_break_a_diagram() -> None:
    server = Flow("s")

    @server.on_open
    def odd(conn: Any) -> None:
        conn.send(b"a;b#c<d>")

    server.add(lambda conn, message: Close(4000, "semi;colon"), name="x")
    transcript = run_pair(server, bye_client())
    diagram = transcript.mermaid()
    assert "    S->>C: b'a#59;b#35;c#lt;d#gt;'" in diagram.splitlines()
    assert "closes 4000 'semi#59;colon'" in diagram
    assert transcript.close_of(CLIENT) == (4000, "semi;colon")


def test_long_messages_are_shortened_in_tables() -> None:
    server = Flow("s")

    @server.on_open
    def big(conn: Any) -> None:
        conn.send(b"x" * 1000)

    server.add(lambda conn, message: False, name="x")
    client = Flow("c")
    client.add(lambda conn, message: Close(1000), name="y")
    transcript = run_pair(server, client)
    assert "(1000 bytes)" in transcript.table()
    assert transcript.received(CLIENT) == [b"x" * 1000]


def test_step_timeout_fires_on_the_fake_clock() -> None:
    server = Flow("s")
    server.add(lambda conn, message: False, name="handshake", timeout=5.0)
    client = Flow("c")
    client.add(lambda conn, message: False, name="silent")
    transcript = run_pair(server, client, clock_start=100.0, latency=0.5)
    assert transcript.outcome == "closed"
    close = transcript.entries(SERVER, "close")[0]
    assert close.time == 105.0
    assert close.payload == (4408, "step 'handshake' timed out after 5s")
    assert transcript.client_code == 4408
    assert transcript.entries(CLIENT, "closed")[0].time == 105.5


def test_application_actions_send_close_and_call() -> None:
    server = Flow("s")
    server.add(lambda conn, message: False, name="listen")
    client = Flow("c")

    @client.step
    def echo(conn: Any, message: bytes) -> bool:
        conn.send(b"echo:" + message)
        return False

    calls: list[float] = []

    def poke(stepper: Stepper, now: float) -> list[Any]:
        calls.append(now)
        return stepper.send(b"poke", now)

    transcript = run_pair(
        server,
        client,
        actions=[(1.0, SERVER, b"news"), (2.0, SERVER, poke), (3.0, SERVER, Close(1001, "bye"))],
    )
    assert calls == [2.0]
    assert transcript.sent(CLIENT) == [b"echo:news", b"echo:poke"]
    assert transcript.close_of(SERVER) == (1001, "bye")
    assert transcript.close_of(CLIENT) == (1001, "bye")
    assert [e.time for e in transcript.entries(SERVER, "action")] == [1.0, 2.0, 3.0]


def test_messages_reaching_a_closing_side_are_dropped() -> None:
    server = Flow("s")
    server.add(lambda conn, message: Close(4010, "no more"), name="once")
    client = Flow("c")

    @client.on_open
    def burst(conn: Any) -> None:
        for n in range(3):
            conn.send(b"%d" % n)

    client.add(lambda conn, message: False, name="wait")
    transcript = run_pair(server, client, latency=1.0)
    assert transcript.received(SERVER) == [b"0"]
    assert [e.payload for e in transcript.entries(SERVER, "drop")] == [b"1", b"2"]
    assert transcript.client_code == 4010


def test_a_handler_failure_closes_1011_and_is_recorded() -> None:
    server = Flow("s")

    @server.step
    def explode(conn: Any, message: bytes) -> bool:
        raise ZeroDivisionError("oops")

    client = Flow("c")

    @client.on_open
    def go(conn: Any) -> None:
        conn.send(b"x")

    client.add(lambda conn, message: False, name="wait")
    transcript = run_pair(server, client)
    [failure] = transcript.failures()
    assert isinstance(failure, ZeroDivisionError)
    assert transcript.entries(kind="failed")[0].step == "explode"
    assert transcript.close_of(CLIENT) == (1011, "internal error")
    assert "**failed** in `explode`: ZeroDivisionError: oops" in transcript.table()


# -- stalls and limits: nothing hangs -------------------------------------------


def test_two_waiting_sides_stall_instead_of_hanging() -> None:
    waiting = Flow("w")
    waiting.add(lambda conn, message: False, name="listen")
    transcript = run_pair(waiting, waiting)
    assert transcript.outcome == "stalled"
    assert [(e.side, e.payload) for e in transcript.entries(kind="stall")] == [
        (SERVER, "listen"),
        (CLIENT, "listen"),
    ]
    assert "stalled" in repr(transcript)


def ping_pong() -> Flow:
    flow = Flow("pp")

    @flow.on_open
    def serve(conn: Any) -> None:
        conn.send(b"ping")

    @flow.step
    def bounce(conn: Any, message: bytes) -> bool:
        conn.send(message)
        return False

    return flow


def test_an_endless_exchange_stops_at_max_events() -> None:
    transcript = run_pair(ping_pong(), ping_pong(), max_events=500)
    assert transcript.outcome == "limit"
    assert len(transcript.entries(kind="send")) <= 500
    assert transcript.entries(kind="limit")[0].payload == "max_events=500 reached"


def test_an_endless_exchange_stops_at_max_time() -> None:
    transcript = run_pair(ping_pong(), ping_pong(), latency=1.0, max_time=10.0)
    assert transcript.outcome == "time limit"
    assert max(e.time for e in transcript) <= 10.0
    assert len(transcript.received(SERVER)) + len(transcript.received(CLIENT)) == 20


def test_bad_arguments_are_refused() -> None:
    flow = ping_pong()
    for kwargs in ({"latency": -1.0}, {"await_delay": float("nan")}, {"max_events": 0}):
        with pytest.raises(ValueError):
            run_pair(flow, flow, **kwargs)
    with pytest.raises(ValueError, match="side"):
        run_pair(flow, flow, actions=[(0.0, "middle", b"x")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="unsupported action"):
        run_pair(flow, flow, actions=[(0.0, SERVER, 42)])  # type: ignore[list-item]


# -- async handlers ----------------------------------------------------------------


def burst_server(count: int) -> Flow:
    flow = Flow("burst")

    @flow.on_open
    def burst(conn: Any) -> None:
        for n in range(count):
            conn.send(b"m%d" % n)

    flow.add(lambda conn, message: False, name="listen")
    return flow


def slow_client(log: list[bytes]) -> Flow:
    flow = Flow("slow")

    @flow.step
    async def handle(conn: Any, message: bytes) -> bool | Close:
        log.append(message)
        conn.send(b"ack:" + message)
        return Close(1000, "done") if message == b"m5" else False

    return flow


def test_async_handlers_keep_order_and_respect_the_queue_bound() -> None:
    log: list[bytes] = []
    transcript = run_pair(burst_server(6), slow_client(log), await_delay=1.0, max_queue=2)
    assert log == [b"m%d" % n for n in range(6)]
    assert transcript.sent(CLIENT) == [b"ack:m%d" % n for n in range(6)]
    assert transcript.failures() == []
    # m0 runs at once; m1 and m2 queue in the Stepper; m3.. wait "in the socket".
    recv_times = [e.time for e in transcript.entries(CLIENT, "recv")]
    assert recv_times == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    resumes = [e.time for e in transcript.entries(CLIENT, "resume")]
    assert resumes == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert transcript.close_of(CLIENT) == (1000, "done")


def test_await_without_delay_resolves_inline() -> None:
    log: list[bytes] = []
    transcript = run_pair(burst_server(6), slow_client(log))
    assert log == [b"m%d" % n for n in range(6)]
    assert {e.time for e in transcript} == {0.0}


def test_awaitables_that_only_yield_none_work_without_a_loop() -> None:
    client = Flow("c")

    @client.step
    async def polite(conn: Any, message: bytes) -> Close:
        await asyncio.sleep(0)  # yields a bare None: no event loop needed
        return Close(1000)

    transcript = run_pair(burst_server(1), client)
    assert transcript.closed


class Trap:
    """An awaitable that really suspends, as on trio or asyncio."""

    def __await__(self) -> Any:
        yield "event-loop-trap"


def test_an_awaitable_needing_a_loop_raises_a_clear_error() -> None:
    client = Flow("c")

    @client.step
    async def waits(conn: Any, message: bytes) -> bool:
        await Trap()
        return True

    with pytest.raises(NeedsEventLoopError, match="arun_pair"):
        run_pair(burst_server(1), client)


def test_an_awaitable_that_never_finishes_is_bounded() -> None:
    client = Flow("c")

    @client.step
    async def spins(conn: Any, message: bytes) -> bool:
        while True:
            await asyncio.sleep(0)

    with pytest.raises(NeedsEventLoopError, match="still running after 50 steps"):
        run_pair(burst_server(1), client, max_await_steps=50)


def test_async_failures_and_async_on_close_hooks() -> None:
    closed: list[str] = []
    client = Flow("c")

    @client.step
    async def fails(conn: Any, message: bytes) -> bool:
        raise LookupError("async boom")

    @client.on_close
    async def cleanup(conn: Any) -> None:
        closed.append(conn.step)

    transcript = run_pair(burst_server(1), client)
    assert [type(f) for f in transcript.failures(CLIENT)] == [LookupError]
    assert transcript.close_of(SERVER) == (1011, "internal error")
    assert closed == ["fails"]


def game_client() -> Flow:
    return readme_client(speak_first=False)


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_root_task()
    except RuntimeError:
        return False
    return True


async def real_checkpoint() -> None:
    if _in_trio():
        await trio.lowlevel.checkpoint()
    else:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        await future


def waiting_server() -> Flow:
    flow = Flow("async-server")

    @flow.on_open
    async def greet(conn: Any) -> None:
        await real_checkpoint()
        conn.send(b"scene")

    @flow.step
    async def handshake(conn: Any, message: bytes) -> bool:
        await real_checkpoint()
        conn.send(b"offer")
        return True

    flow.add(lambda conn, message: True, name="answer")
    return flow


def check_async_game(transcript: Transcript) -> None:
    assert transcript.sent(SERVER) == [b"scene", b"offer"]
    assert transcript.sent(CLIENT) == [b"ready", b"answer"]
    assert transcript.close_of(SERVER) == (1000, "flow complete")
    assert transcript.close_of(CLIENT) == (1000, "flow complete")


def test_run_pair_has_no_loop_for_handlers_that_ask_for_one() -> None:
    # asyncio.get_running_loop() raises inside the hook: an ordinary hook failure.
    transcript = run_pair(waiting_server(), game_client())
    [failure] = transcript.failures(SERVER)
    assert isinstance(failure, RuntimeError)
    assert transcript.server_code == 1011


def test_arun_pair_awaits_for_real_under_asyncio() -> None:
    check_async_game(asyncio.run(arun_pair(waiting_server(), game_client())))


def test_arun_pair_awaits_for_real_under_trio() -> None:
    check_async_game(trio.run(arun_pair, waiting_server(), game_client()))


def test_arun_pair_reports_async_failures() -> None:
    client = Flow("c")

    @client.step
    async def fails(conn: Any, message: bytes) -> bool:
        await real_checkpoint()
        raise KeyError("k")

    transcript = asyncio.run(arun_pair(burst_server(1), client))
    assert [type(f) for f in transcript.failures(CLIENT)] == [KeyError]


def test_resolve_returns_or_raises() -> None:
    async def value() -> int:
        return 7

    async def error() -> int:
        raise ValueError("v")

    assert resolve(value()) == 7
    with pytest.raises(ValueError, match="v"):
        resolve(error())


def test_entries_print_as_a_log() -> None:
    entry = Entry(SERVER, "send", b"hi", 1.5, "wait")
    assert str(entry) == "    1.5000  server  sends b'hi'"
    assert entry.describe(markdown=True) == "sends `b'hi'`"


# -- fuzz_flow -------------------------------------------------------------------


def handshake_flow(*, broken: bool = False, bad_code: bool = False) -> Flow:
    flow = Flow("handshake")

    @flow.on_open
    def hello(conn: Any) -> None:
        conn.send(b"hello")

    @flow.step(timeout=5.0)
    def version(conn: Any, message: bytes) -> bool | Close:
        # The planted bug: `broken` forgets that a message may be empty (IndexError).
        kind = message[0] if message or broken else -1
        if kind == 1:
            return True
        if bad_code and message == b"quit":
            return Close(1014, "bad gateway")  # planted: not a code socker documents
        return Close(4400, "bad version") if kind == 0 else False

    @flow.step(timeout=5.0)
    async def login(conn: Any, message: bytes) -> bool | Goto | Close:
        if message == b"retry":
            return Goto("version")
        conn.state.user = message
        conn.send(b"welcome")
        return True

    @flow.step
    def play(conn: Any, message: bytes) -> bool:
        conn.send(message)
        return message == b"quit"

    @flow.on_close
    def cleanup(conn: Any) -> None:
        conn.state.cleaned = True

    return flow


MESSAGES = [b"\x01", b"\x00", b"alice", b"retry", b"quit"]


def test_fuzz_flow_passes_a_good_flow_and_reaches_its_steps() -> None:
    stats = fuzz_flow(handshake_flow(), messages=MESSAGES, max_examples=150, seed=1)
    assert stats.runs >= 150
    assert stats.steps_reached["play"] > 0
    assert {1000, 1006, 1011, 4408, 4400} & set(stats.close_codes) >= {1006, 4408}


def test_fuzz_flow_finds_a_planted_handler_bug_with_a_minimal_example() -> None:
    with pytest.raises(FuzzFailure) as info:
        fuzz_flow(handshake_flow(broken=True), messages=MESSAGES, max_examples=200, seed=2)
    message = str(info.value)
    assert "step 'version' failed: IndexError" in message
    assert "ops=[receive(b'')]" in message
    assert info.value.ops == [FuzzOp("receive", b"")]
    # The failure can be replayed without hypothesis, and the fix checked against it.
    with pytest.raises(FuzzFailure, match="IndexError"):
        replay_fuzz(handshake_flow(broken=True), info.value.ops, eager=info.value.eager)
    stats = replay_fuzz(handshake_flow(), info.value.ops, eager=info.value.eager)
    assert stats.runs == 1
    assert stats.close_codes == {1006: 1}


def test_fuzz_flow_finds_an_undocumented_close_code() -> None:
    with pytest.raises(FuzzFailure, match="closed with 1014"):
        fuzz_flow(handshake_flow(bad_code=True), messages=MESSAGES, max_examples=200, seed=3)


def test_fuzz_flow_accepts_errors_the_flow_raises_on_purpose() -> None:
    stats = fuzz_flow(
        handshake_flow(broken=True),
        messages=MESSAGES,
        max_examples=100,
        seed=4,
        allowed_errors=(IndexError,),
    )
    assert stats.handler_failures > 0
    assert stats.close_codes[1011] > 0


def test_fuzz_flow_catches_a_core_that_skips_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Stepper.transport_closed

    def forgetful(self: Stepper, code: int, reason: str, now: float) -> Any:
        hooks = self.flow.close_hooks
        self.flow.close_hooks = []
        try:
            return original(self, code, reason, now)
        finally:
            self.flow.close_hooks = hooks

    monkeypatch.setattr(Stepper, "transport_closed", forgetful)
    with pytest.raises(FuzzFailure, match=r"on_close hooks ran \[0, 0\] times"):
        fuzz_flow(handshake_flow(), max_examples=20, seed=5)


def test_fuzz_flow_catches_a_core_that_leaks_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Stepper.receive

    def leaky(self: Stepper, message: bytes, now: float) -> Any:
        if len(message) > 100_000:
            raise MemoryError("pretend")
        return original(self, message, now)

    monkeypatch.setattr(Stepper, "receive", leaky)
    with pytest.raises(FuzzFailure, match=r"Stepper\.receive raised MemoryError") as info:
        fuzz_flow(handshake_flow(), max_examples=200, seed=6)
    assert "ops=[receive(b'\\x00' * 1000" in str(info.value)


def test_fuzz_flow_needs_hypothesis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(ImportError, match="pip install hypothesis"):
        fuzz_flow(handshake_flow())
