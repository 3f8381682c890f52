"""`python -m benchmarks.blocking_handler`: another connection's round trips while
one connection's handler runs `time.sleep(2)` on the anyio driver, without and
with `blocking=True`. Prints milliseconds per round trip (5 each)."""

from __future__ import annotations

import threading
import time

from anyio.from_thread import start_blocking_portal
from websockets.sync.client import connect

from socker_core import Connection, Flow
from socker_transports.anyio import serve

SLEEP = 2.0


def sleepy(started: threading.Event, *, blocking: bool) -> Flow:
    flow = Flow("sleepy")

    @flow.step(blocking=blocking)
    def work(conn: Connection, message: bytes) -> bool:
        if message == b"sleep":
            started.set()
            time.sleep(SLEEP)
        conn.send(message)
        return False

    return flow


def measure(blocking: bool) -> list[float]:
    started = threading.Event()
    with start_blocking_portal("asyncio") as portal:
        cm = portal.wrap_async_context_manager(serve(sleepy(started, blocking=blocking)))
        server = cm.__enter__()
        try:
            with connect(server.url) as a, connect(server.url) as b:
                a.send(b"sleep")
                if not started.wait(10):
                    raise RuntimeError("the sleeping handler did not start")
                trips = []
                for _ in range(5):
                    sent = time.perf_counter()
                    b.send(b"ping")
                    b.recv(timeout=SLEEP + 10)
                    trips.append((time.perf_counter() - sent) * 1000)
                a.recv(timeout=SLEEP + 10)
        finally:
            cm.__exit__(None, None, None)
    return trips


def main() -> None:
    for blocking in (False, True):
        trips = measure(blocking)
        shown = ", ".join(f"{t:.1f}" for t in trips)
        print(f"blocking={blocking!s:5}  other connection's round trips (ms): {shown}")


if __name__ == "__main__":
    main()
