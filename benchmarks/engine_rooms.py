"""`python -m benchmarks.engine_rooms [--count N]`: a server's room broadcasts through
its engine (`serve(..., engine=)`), end to end over a loopback websocket.

Starts its own `redis-server` (see engine_latency.py). For each backend (asyncio,
uvloop, trio) and engine ("memory://", Redis), one anyio server whose one client is
in room "r":

- burst: `--count` 64 B `server.broadcast(room="r")` calls in a row (queued, in
  order), then the time until the client received the last one: broadcasts per
  second through the engine and back (the server's ordered queue has one
  publication in flight at a time);
- confirmed: `--confirmed` `await server.publish(room="r")` one after another: the
  mean time until the store confirmed each.

Every wait is bounded (60 s). Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio

from benchmarks.engine_latency import BACKENDS, redis_server
from socker_core import Connection, Flow
from socker_transports.anyio import connect, serve

PAYLOAD = b"x" * 64


def _room_flow() -> Flow:
    flow = Flow("room")

    @flow.on_open
    def enter(conn: Connection) -> None:
        conn.join("r")

    @flow.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    return flow


async def measure(url: str, count: int, confirmed: int) -> dict[str, float]:
    received = 0
    last = anyio.Event()
    listener = Flow("listener")

    @listener.step
    def listen(conn: Connection, message: bytes) -> bool:
        nonlocal received
        received += 1
        if received == count:
            last.set()
        return False

    server_cm = serve(_room_flow(), "127.0.0.1", 0, engine=url)
    async with server_cm as server, connect(server.url, listener):
        with anyio.fail_after(60):
            while not server.room("r"):
                await anyio.sleep(0.005)
            await server.presence("r")  # the member's engine join is done
            started = time.perf_counter()
            for _ in range(count):
                server.broadcast(PAYLOAD, room="r")
            await last.wait()
            burst = time.perf_counter() - started
        with anyio.fail_after(60):
            started = time.perf_counter()
            for _ in range(confirmed):
                await server.publish(PAYLOAD, room="r")
            publish = (time.perf_counter() - started) / confirmed
    return {"per_second": count / burst, "publish_us": publish * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_rooms")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--confirmed", type=int, default=300)
    ns = parser.parse_args(argv)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with redis_server() as redis_url:
        for name, (backend, options) in BACKENDS.items():
            for label, url in (("memory", "memory://"), ("redis", redis_url)):
                result = anyio.run(
                    measure, url, ns.count, ns.confirmed, backend=backend, backend_options=options
                )
                rows.append((name, label, result))
    print(f"{ns.count} broadcasts of 64 B to one member, through the engine and back\n")
    print("| backend | engine | broadcasts/s (burst) | confirmed publish (µs) |")
    print("|---|---|--:|--:|")
    for name, label, result in rows:
        print(f"| {name} | {label} | {result['per_second']:,.0f} | {result['publish_us']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
