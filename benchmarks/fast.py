"""Fast-client mode: server CPU per message with a client that is not the bottleneck.

The client is picows on uvloop (Cython framing, C masking), in its own process;
with `--pin` (the default when the machine has two or more CPUs) server and client
run on different cores (`taskset`). Each (implementation, scenario) round starts
a fresh echo server (`python -m benchmarks.peers NAME`) and measures its CPU
(user + system, /proc) over a bounded window; rounds alternate implementations so
machine noise hits all alike; the table shows medians, and each socker figure as
a ratio to websockets' asyncio server in the same run.

Scenarios: ping-pong at 16 B, 1 KiB, 64 KiB and 1 MiB with 1 and with 50
connections (each connection one message in flight), and 16 B pipelined (each
of 50 connections keeps 64 messages in flight). Reported: server CPU µs per
message, messages (round trips) per second.

    python -m benchmarks.fast [--quick] [--only a,b] [--scenarios pp16x1,...]
        [--rounds N] [--duration S] [--no-pin] [--output PATH]

Needs `pip install picows aiohttp` (picows also for the client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from .client import cpu_seconds

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
BASE = "websockets-asyncio"
IMPLS = [
    "socker-anyio-asyncio",
    "socker-anyio-uvloop",
    "socker-anyio-trio",
    "socker-threaded",
    "websockets-asyncio",
    "picows-uvloop",
    "aiohttp",
]
KiB = 1024


@dataclass(frozen=True)
class Scenario:
    key: str
    size: int
    connections: int
    in_flight: int  # messages in flight per connection


SCENARIOS = [
    Scenario(f"pp{label}x{n}", size, n, 1)
    for label, size in (("16", 16), ("1k", KiB), ("64k", 64 * KiB), ("1m", KiB * KiB))
    for n in (1, 50)
] + [Scenario("pipe16x50", 16, 50, 64)]


# -- the client (runs in its own process: `python -m benchmarks.fast --client ...`) -------


async def _client(
    port: int, scenario: Scenario, duration: float, server_pid: int
) -> dict[str, Any]:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    payload = os.urandom(scenario.size)
    counts = [0]
    stop = [False]

    class Echo(WSListener):
        def __init__(self) -> None:
            self.transport: WSTransport | None = None
            self.got = 0  # bytes of the current echo

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()
                return
            self.got += frame.payload_size
            if not frame.fin or self.got < scenario.size:
                return
            self.got = 0
            counts[0] += 1
            if not stop[0]:
                transport.send(WSMsgType.BINARY, payload)

    url = f"ws://127.0.0.1:{port}/"
    conns = []
    for _ in range(scenario.connections):
        transport, listener = await ws_connect(Echo, url, max_frame_size=4 * KiB * KiB)
        conns.append((transport, listener))

    async def window(length: float) -> tuple[int, float, float]:
        start_count = counts[0]
        start_cpu = cpu_seconds(server_pid)
        start = time.perf_counter()
        await asyncio.sleep(length)
        return (
            counts[0] - start_count,
            time.perf_counter() - start,
            cpu_seconds(server_pid) - start_cpu,
        )

    for transport, _ in conns:
        for _ in range(scenario.in_flight):
            transport.send(WSMsgType.BINARY, payload)
    await asyncio.sleep(min(0.3, duration / 4))  # warm up
    messages, elapsed, cpu = await window(duration)
    stop[0] = True
    await asyncio.sleep(0.2)
    for transport, _ in conns:
        transport.send_close(WSCloseCode.OK)
    for transport, _ in conns:
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 5)
        except asyncio.TimeoutError:
            transport.disconnect()
    return {
        "messages": messages,
        "per_second": messages / elapsed if elapsed else 0.0,
        "server_cpu_us_per_msg": cpu / messages * 1e6 if messages else None,
    }


def client_main(args: argparse.Namespace) -> int:
    import uvloop

    scenario = next(s for s in SCENARIOS if s.key == args.scenario)
    result = uvloop.run(_client(args.port, scenario, args.duration, args.server_pid))
    print(json.dumps(result), flush=True)
    return 0


# -- the runner ------------------------------------------------------------------------------


def _taskset(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def one_round(impl: str, scenario: Scenario, duration: float, pin: bool) -> dict[str, Any]:
    server = subprocess.Popen(
        [*_taskset(0 if pin else None), PY, "-m", "benchmarks.peers", impl, "--lifetime", "120"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{impl} did not start: {server.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
        port = int(line.split()[1])
        client = subprocess.run(
            [
                *_taskset(1 if pin else None),
                PY,
                "-m",
                "benchmarks.fast",
                "--client",
                "--port",
                str(port),
                "--scenario",
                scenario.key,
                "--duration",
                str(duration),
                "--server-pid",
                str(server.pid),
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=duration * 4 + 60,
            check=False,
        )
        if client.returncode:
            raise RuntimeError(f"client failed on {impl}: {client.stderr.decode()[-800:]}")
        result: dict[str, Any] = json.loads(client.stdout)
        return result
    finally:
        server.kill()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fast")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scenario", default="", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one round of 0.5 s windows")
    parser.add_argument("--only", default="", help="implementations, comma-separated")
    parser.add_argument("--scenarios", default="", help="scenario keys, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "fast.json"))
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    if args.quick:
        args.rounds, args.duration = 1, 0.5
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    impls = args.only.split(",") if args.only else IMPLS
    if BASE not in impls:
        impls = [*impls, BASE]
    wanted = set(args.scenarios.split(",")) if args.scenarios else None
    scenarios = [s for s in SCENARIOS if wanted is None or s.key in wanted]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {i: {} for i in impls}
    for rnd in range(args.rounds):
        for scenario in scenarios:
            for impl in impls if rnd % 2 == 0 else list(reversed(impls)):
                try:
                    result = one_round(impl, scenario, args.duration, pin)
                except Exception as exc:  # reported, the run goes on
                    print(f"{impl} {scenario.key}: {exc}", file=sys.stderr, flush=True)
                    continue
                samples[impl].setdefault(scenario.key, []).append(result)
                print(f"round {rnd} {scenario.key:10} {impl:22} {result}", file=sys.stderr)
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for impl, by_scenario in samples.items():
        for key, results in by_scenario.items():
            cpus = [r["server_cpu_us_per_msg"] for r in results if r["server_cpu_us_per_msg"]]
            table.setdefault(impl, {})[key] = {
                "server_cpu_us_per_msg": median(cpus) if cpus else None,
                "per_second": median(r["per_second"] for r in results),
            }
    report = {"pinned": pin, "rounds": args.rounds, "duration": args.duration, "table": table}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(render(table, [s.key for s in scenarios], impls))
    return 0


def render(table: dict[str, Any], keys: list[str], impls: list[str]) -> str:
    lines = ["server CPU µs/message (ratio to websockets-asyncio) | messages/s"]
    lines.append(f"{'scenario':10} " + " ".join(f"{i[:22]:>30}" for i in impls))
    for key in keys:
        base = table.get(BASE, {}).get(key, {}).get("server_cpu_us_per_msg")
        cells = []
        for impl in impls:
            row = table.get(impl, {}).get(key)
            if not row or row["server_cpu_us_per_msg"] is None:
                cells.append(f"{'-':>30}")
                continue
            cpu = row["server_cpu_us_per_msg"]
            ratio = f"{cpu / base:.2f}x" if base else "?"
            cells.append(f"{cpu:9.1f} ({ratio:>6}) {row['per_second']:9.0f}/s")
        lines.append(f"{key:10} " + " ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
