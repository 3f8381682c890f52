"""`python -m benchmarks.workers_echo [--quick]`: 16 B echo over 100 connections, served
by `socker serve --workers 1` and by `--workers 2`, in the same run.

Each round starts a fresh `socker serve benchmarks.workers_echo:ECHO --workers W`
(anyio, asyncio) and `--client-processes` load clients (`python -m
benchmarks.workers_echo --client ...`), which share `--connections` connections and
keep `--depth` 16-byte messages in flight on each (a reply frees one slot). Clients
count replies during `--duration` seconds after a warm-up; the table shows the median
messages/s over rounds per worker count, the ratio 2 workers / 1 worker, and the
servers' CPU per message (all worker processes, from /proc). Rounds alternate the
worker counts so machine noise hits both alike. Every process is bounded in time.

The clients run on the same machine: on 2 cores they compete with the workers for
CPU, so the ratio measured here is a floor of what 2 workers give when clients are
elsewhere. Results go to `benchmarks/results/workers_echo.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.client import client_frame, cpu_seconds, open_ws
from benchmarks.peers._flow import echo_flow

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "workers_echo.json"
PY = sys.executable

#: The flow `socker serve` runs in every worker.
ECHO = echo_flow()

PAYLOAD = b"x" * 16
REPLY_SIZE = 2 + len(PAYLOAD)  # an unmasked server frame: 2-byte header + payload


# -- the load client -------------------------------------------------------------


def run_client(port: int, connections: int, depth: int, warmup: float, duration: float) -> None:
    frame = client_frame(PAYLOAD)
    socks = []
    for _ in range(connections):
        sock, reader = open_ws(port)
        assert reader.end == reader.start, "no data expected before the first message"
        socks.append(sock)
    selector = selectors.DefaultSelector()
    leftover: dict[int, int] = {}
    for sock in socks:
        sock.settimeout(10.0)
        sock.sendall(frame * depth)
        selector.register(sock, selectors.EVENT_READ)
        leftover[sock.fileno()] = 0
    start = time.monotonic()
    measure_from = start + warmup
    end = measure_from + duration
    counted = every = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for key, _ in selector.select(timeout=min(0.5, end - now)):
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the server closed a connection")
            total = leftover[sock.fileno()] + len(data)
            replies, leftover[sock.fileno()] = divmod(total, REPLY_SIZE)
            if replies:
                every += replies
                if time.monotonic() >= measure_from:
                    counted += replies
                sock.sendall(frame * replies)
    for sock in socks:
        sock.close()
    print(json.dumps({"messages": counted, "every": every, "seconds": duration}), flush=True)


# -- one round -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def one_round(workers: int, ns: argparse.Namespace) -> dict[str, float]:
    server = subprocess.Popen(
        [PY, "-m", "socker_transports", "serve", "benchmarks.workers_echo:ECHO",
         "--port", "0", "--workers", str(workers), "--close-timeout", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = next(word for word in line.split() if word.startswith("ws://"))
        port = int(url.rsplit(":", 1)[1])
        pids = _children(server.pid) if workers > 1 else [server.pid]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        per_client = ns.connections // ns.client_processes
        clients = [
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "benchmarks.workers_echo",
                    "--client",
                    "--port",
                    str(port),
                    "--connections",
                    str(per_client),
                    "--depth",
                    str(ns.depth),
                    "--warmup",
                    str(ns.warmup),
                    "--duration",
                    str(ns.duration),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(ns.client_processes)
        ]
        results = []
        for client in clients:
            out, _ = client.communicate(timeout=ns.warmup + ns.duration + 60)
            if client.returncode != 0:
                raise SystemExit(f"a load client failed ({client.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        messages = sum(r["messages"] for r in results)
        every = sum(r["every"] for r in results)  # CPU is read over the whole client run
        return {
            "msg_per_s": messages / ns.duration,
            "server_cpu_us_per_msg": 1e6 * cpu / max(1, every),
            "worker_cpu_s": [round(cpu_seconds(pid), 2) for pid in pids],
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_echo")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--depth", type=int, default=8, help="messages in flight per connection")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    ns = parser.parse_args(argv)
    if ns.client:
        run_client(ns.port, ns.connections, ns.depth, ns.warmup, ns.duration)
        return 0
    if ns.quick:
        ns.rounds, ns.duration, ns.warmup = 1, 1.0, 0.5
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(ns.rounds):
        for workers in (1, 2):
            runs[workers].append(one_round(workers, ns))
    summary: dict[str, Any] = {}
    for workers, rounds in runs.items():
        summary[f"workers_{workers}"] = {
            "msg_per_s": statistics.median(r["msg_per_s"] for r in rounds),
            "server_cpu_us_per_msg": statistics.median(r["server_cpu_us_per_msg"] for r in rounds),
            "rounds": rounds,
        }
    one, two = summary["workers_1"]["msg_per_s"], summary["workers_2"]["msg_per_s"]
    summary["ratio_2_over_1"] = two / one if one else 0.0
    summary["config"] = {k: v for k, v in vars(ns).items() if k not in ("client", "port")}
    summary["cpus"] = os.cpu_count()
    print(f"16 B echo, {ns.connections} connections, depth {ns.depth}, {ns.rounds} rounds")
    print("| workers | msg/s (median) | server µs CPU / msg |")
    print("|---|---|---|")
    for workers in (1, 2):
        row = summary[f"workers_{workers}"]
        print(f"| {workers} | {row['msg_per_s']:,.0f} | {row['server_cpu_us_per_msg']:.1f} |")
    print(f"2 workers / 1 worker: {summary['ratio_2_over_1']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
