"""`python -m benchmarks.engine_latency [--quick]`: what one hop through the engine costs.

Starts its own `redis-server` (127.0.0.1, a free port, no persistence, a temporary
directory; stopped at the end). For each backend (asyncio, uvloop, trio), one
publishing engine and one subscribed engine (two Redis connections, as two workers
would have) in this process:

- latency: `--count` 64 B publications one after another; for each, the time until
  `publish` returned (Redis confirmed it) and until the subscriber's receiver got it;
  p50 / p99 in microseconds;
- throughput: `--tasks` tasks publishing at once for `--duration` seconds; confirmed
  publications per second, all of them received in order (checked).

The in-process `LocalEngine` is measured the same way for reference. Results go to
`benchmarks/results/engine_latency.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from benchmarks.redis_server import REDIS_SERVER, RedisServer
from socker_transports.engine import Engine, LocalEngine, Publication, RoomEvent
from socker_transports.engine.redis_engine import RedisEngine

RESULTS = Path(__file__).resolve().parent / "results" / "engine_latency.json"
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


@contextmanager
def redis_server() -> Iterator[str]:
    if REDIS_SERVER is None:
        raise SystemExit("redis-server is not installed: run `make redis`")
    with RedisServer.temporary() as server:
        yield server.url


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(publisher: Engine, subscriber: Engine, ns: argparse.Namespace) -> dict[str, Any]:
    arrived: dict[int, float] = {}
    got_one = anyio.Event()
    order: list[int] = []

    def receive(event: RoomEvent) -> None:
        nonlocal got_one
        if isinstance(event, Publication):
            arrived[event.offset] = time.perf_counter()
            order.append(event.offset)
            got_one.set()

    subscriber.set_receiver(receive)
    room = f"bench-{time.monotonic_ns()}"
    await subscriber.join(room, "member")
    payload = b"x" * 64
    confirm_us: list[float] = []
    deliver_us: list[float] = []
    with anyio.fail_after(60):
        for _ in range(ns.count):
            got_one = anyio.Event()
            start = time.perf_counter()
            position = await publisher.publish(room, payload)
            confirm_us.append((time.perf_counter() - start) * 1e6)
            while position.offset not in arrived:
                await got_one.wait()
                got_one = anyio.Event()
            deliver_us.append((arrived[position.offset] - start) * 1e6)

    published = 0
    stop_at = time.perf_counter() + ns.duration

    async def hammer() -> None:
        nonlocal published
        while time.perf_counter() < stop_at:
            await publisher.publish(room, payload)
            published += 1

    begin = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(ns.tasks):
            tg.start_soon(hammer)
    elapsed = time.perf_counter() - begin
    with anyio.fail_after(30):
        while len(order) < ns.count + published:
            await anyio.sleep(0.01)
    assert order == list(range(1, ns.count + published + 1)), "out of order or lost"
    await subscriber.leave(room, "member")
    return {
        "confirm_p50_us": statistics.median(confirm_us),
        "confirm_p99_us": _percentile(confirm_us, 0.99),
        "deliver_p50_us": statistics.median(deliver_us),
        "deliver_p99_us": _percentile(deliver_us, 0.99),
        "publish_per_s": published / elapsed,
    }


async def run_redis(url: str, ns: argparse.Namespace) -> dict[str, Any]:
    async with RedisEngine(url) as publisher, RedisEngine(url) as subscriber:
        return await measure(publisher, subscriber, ns)


async def run_local(ns: argparse.Namespace) -> dict[str, Any]:
    async with LocalEngine() as engine:
        return await measure(engine, engine, ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_latency")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="200 publications, 0.5 s")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.count, ns.duration = 200, 0.5
    rows: dict[str, dict[str, Any]] = {}
    with redis_server() as url:
        for name, (backend, options) in BACKENDS.items():
            rows[f"redis, {name}"] = anyio.run(
                run_redis, url, ns, backend=backend, backend_options=options
            )
    rows["local, asyncio"] = anyio.run(run_local, ns)
    print(f"64 B publications: {ns.count} one at a time, then {ns.tasks} tasks for {ns.duration}s")
    print("| engine | confirmed p50 / p99 µs | received p50 / p99 µs | publish/s |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['confirm_p50_us']:.0f} / {row['confirm_p99_us']:.0f} "
            f"| {row['deliver_p50_us']:.0f} / {row['deliver_p99_us']:.0f} "
            f"| {row['publish_per_s']:,.0f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": vars(ns), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
