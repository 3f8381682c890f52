"""`@flow.step(blocking=True)`: a plain `def` handler that blocks runs in a worker
thread on the anyio driver and under the ASGI App, so other connections keep
their round trips while it sleeps, and its connection's messages stay in order.
On the threaded driver (a thread per connection already) the flag changes nothing.

The `time.sleep` inside the handlers is the point of these tests (a handler that
blocks), not synchronisation: the tests wait on events the handlers set.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from socker_core import Connection, Flow, FlowDefinitionError
from tests.asgi.harness_asgi import STACKS, AsgiHarness
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.harness_anyio import AnyioHarness
from tests.transports.test_conformance import closed_code

SLEEP = 2.0


def sleepy_flow(started: threading.Event, *, blocking: bool) -> Flow:
    flow = Flow("sleepy")

    @flow.step(blocking=blocking)
    def work(conn: Connection, message: bytes) -> bool:
        if message == b"sleep":
            started.set()
            time.sleep(SLEEP)  # the blocking call under test
            conn.send(b"slept")
        else:
            conn.send(b"echo " + message)
        return False

    return flow


def round_trips_while_sleeping(url: str, started: threading.Event) -> tuple[list[float], Any]:
    """A sleeps in its handler; B measures round trips meanwhile. Returns B's round
    trip times and what A received, in order."""
    with (
        ws_connect(url, open_timeout=deadline(5)) as a,
        ws_connect(url, open_timeout=deadline(5)) as b,
    ):
        a.send(b"sleep")
        a.send(b"m1")  # queued behind the sleeping handler: must come after "slept"
        a.send(b"m2")
        assert started.wait(deadline(5)), "the blocking handler did not start"
        began = time.monotonic()
        trips = []
        for i in range(5):
            sent = time.monotonic()
            b.send(b"ping %d" % i)
            assert b.recv(timeout=deadline(5) + SLEEP) == b"echo ping %d" % i
            trips.append(time.monotonic() - sent)
        b_done = time.monotonic() - began
        a_got = [a.recv(timeout=deadline(5) + SLEEP) for _ in range(3)]
    return [*trips, b_done], a_got


def check(trips: list[float], a_got: list[bytes]) -> None:
    *round_trips, b_done = trips
    # Generous (scaled) bound; the figure is 50 ms, unloaded.
    assert max(round_trips) < deadline(0.5), round_trips
    assert b_done < SLEEP, (b_done, "B waited for A's handler")
    assert a_got == [b"slept", b"echo m1", b"echo m2"]


def test_blocking_handler_does_not_delay_other_connections(start_server: StartServer) -> None:
    started = threading.Event()
    server = start_server(sleepy_flow(started, blocking=True))
    check(*round_trips_while_sleeping(server.url, started))


@pytest.mark.parametrize("stack", list(STACKS))
def test_blocking_handler_under_asgi(stack: str) -> None:
    started = threading.Event()
    server = AsgiHarness(stack).start_server(sleepy_flow(started, blocking=True))
    try:
        check(*round_trips_while_sleeping(server.url, started))
    finally:
        server.stop()


def test_without_the_flag_a_sleeping_handler_stalls_the_loop() -> None:
    """The control: a plain `def` that sleeps on the anyio driver holds every
    connection of its event loop (B's first round trip waits for A's sleep)."""
    started = threading.Event()
    server = AnyioHarness("anyio-asyncio", "asyncio", {}).start_server(
        sleepy_flow(started, blocking=False)
    )
    try:
        trips, a_got = round_trips_while_sleeping(server.url, started)
    finally:
        server.stop()
    assert trips[0] > SLEEP * 0.5, trips
    assert a_got == [b"slept", b"echo m1", b"echo m2"]


def test_sends_and_close_from_the_worker_thread(start_server: StartServer) -> None:
    flow = Flow("threaded-close")

    @flow.step(blocking=True)
    def work(conn: Connection, message: bytes) -> bool:
        conn.state.thread = threading.current_thread().name
        conn.send(b"one")
        conn.send(b"two")
        conn.close(4001, "done in a thread")
        return False

    server = start_server(flow)
    with ws_connect(server.url, open_timeout=deadline(5)) as ws:
        ws.send(b"go")
        assert ws.recv(timeout=deadline(5)) == b"one"
        assert ws.recv(timeout=deadline(5)) == b"two"
        assert closed_code(ws) == (4001, "done in a thread")


def test_blocking_is_for_plain_def_handlers() -> None:
    flow = Flow("f")

    async def handler(conn: Connection, message: bytes) -> bool:
        return True

    with pytest.raises(FlowDefinitionError, match="plain def"):
        flow.add(handler, blocking=True)
    step = flow.add(lambda conn, message: True, name="sync", blocking=True)
    assert step.blocking is True
