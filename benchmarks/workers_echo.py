"""`python -m benchmarks.workers_echo [--quick]`: 16 B echo over 100 connections, served
by `socker serve --workers 1` and by `--workers 2`, in the same run.

Each round starts a fresh `socker serve benchmarks.workers_echo:ECHO --workers W`
(anyio, asyncio) and `--client-processes` load clients (`python -m
benchmarks.workers_echo --client ...`: blocking sockets and hand-built frames, one
`recv` and one `sendall` per batch of replies, see benchmarks/client.py), which share
`--connections` connections and keep `--depth` 16-byte messages in flight on each (a
reply frees one slot). Rounds alternate the worker counts so machine noise hits both
alike; every process is bounded in time.

The measurement window is the same for every figure: after `--warmup` seconds of
traffic the parent asks every client for its reply count and reads, at that moment
and again `--duration` seconds later, the CPU time of every server and client process
(/proc/PID/stat), the workers' time spent runnable but waiting for a CPU
(/proc/PID/schedstat) and the whole machine's busy and steal time (/proc/stat). So
the table gives, per worker count (median over rounds):

- msg/s: replies counted by the clients in the window / its length;
- server and client CPU per message, the interrupt time (loopback's softirq, which
  the kernel charges to no process) and the CPU the *other* processes of the
  machine took in the window (a shared machine: other people's work; approximate:
  /proc/stat is sampled per tick, process times are exact);
- the workers' CPU wait (% of the window spent waiting for a core);
- the ceiling: what this machine could give at the measured CPU per message if
  nothing else ran on it: min(W / S, cores / (S + C)) with S the servers' and C the
  clients' CPU per message. On 2 cores the clients compete with 2 workers, so the
  2-worker ceiling is 2 / (S + C), and 2 workers can show at least 1.6x the
  messages/s of 1 only if the clients cost at most about a quarter of the server per
  message (C <= S/4 when S is the same with 1 and 2 workers). Deeper pipelining
  (`--depth`) makes both sides cheaper per message (more replies per system call):
  at the default depth of 64 the client costs about a tenth of the server per
  message, at depth 8 about a third (which alone caps 2 workers near 1.5x here).

`--pin-workers` puts worker i on CPU i (os.sched_setaffinity; the clients float).

Results go to `benchmarks/results/workers_echo.json` (or `--output`).
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
from benchmarks.machine import children, machine_seconds, run_queue_seconds
from benchmarks.peers._flow import echo_flow

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "workers_echo.json"
PY = sys.executable
CORES = os.cpu_count() or 1

#: The flow `socker serve` runs in every worker.
ECHO = echo_flow()

PAYLOAD = b"x" * 16
REPLY_SIZE = 2 + len(PAYLOAD)  # an unmasked server frame: 2-byte header + payload
#: Seconds a load client lives at most, whatever its parent does.
CLIENT_LIFETIME = 300.0


# -- the load client -------------------------------------------------------------


def run_client(port: int, connections: int, depth: int) -> None:
    """Connect, print {"ready"}; on stdin `go` start the traffic, on `mark` print the
    replies counted so far, on `stop` (or end of input, or CLIENT_LIFETIME) end."""
    frame = client_frame(PAYLOAD)
    socks = []
    for _ in range(connections):
        sock, reader = open_ws(port)
        assert reader.end == reader.start, "no data expected before the first message"
        sock.settimeout(10.0)
        socks.append(sock)
    selector = selectors.DefaultSelector()
    control = sys.stdin.fileno()
    selector.register(control, selectors.EVENT_READ)
    leftover: dict[int, int] = {}
    print(json.dumps({"ready": connections}), flush=True)
    end = time.monotonic() + CLIENT_LIFETIME
    every = 0
    pending = b""
    running = True
    while running and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.5):
            if key.fd == control:
                chunk = os.read(control, 4096)
                if not chunk:
                    running = False
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line == b"go":
                        for sock in socks:
                            sock.sendall(frame * depth)
                            selector.register(sock, selectors.EVENT_READ)
                            leftover[sock.fileno()] = 0
                    elif line == b"mark":
                        print(json.dumps({"count": every}), flush=True)
                    else:
                        running = False
                continue
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the server closed a connection")
            total = leftover[sock.fileno()] + len(data)
            replies, leftover[sock.fileno()] = divmod(total, REPLY_SIZE)
            if replies:
                every += replies
                sock.sendall(frame * replies)
    for sock in socks:
        sock.close()


# -- what the machine did in the window ------------------------------------------


def snapshot(servers: list[int], clients: list[int]) -> dict[str, float]:
    busy, interrupts, steal = machine_seconds()
    return {
        "t": time.monotonic(),
        "server": sum(cpu_seconds(pid) for pid in servers),
        "client": sum(cpu_seconds(pid) for pid in clients),
        "wait": sum(run_queue_seconds(pid) for pid in servers),
        "busy": busy,
        "interrupts": interrupts,
        "steal": steal,
        **{f"worker{number}": cpu_seconds(pid) for number, pid in enumerate(servers)},
    }


# -- one round -------------------------------------------------------------------


def _tell(clients: list[subprocess.Popen[str]], line: str) -> None:
    for client in clients:
        assert client.stdin is not None
        client.stdin.write(line + "\n")
        client.stdin.flush()


def _answers(clients: list[subprocess.Popen[str]], key: str) -> list[int]:
    values = []
    for client in clients:
        assert client.stdout is not None
        line = client.stdout.readline()  # bounded: every client ends within its lifetime
        if not line:
            raise SystemExit(f"a load client ended early ({client.wait()})")
        values.append(int(json.loads(line)[key]))
    return values


def one_round(workers: int, ns: argparse.Namespace) -> dict[str, Any]:
    server = subprocess.Popen(
        [PY, "-m", "socker_transports", "serve", "benchmarks.workers_echo:ECHO",
         "--port", "0", "--workers", str(workers), "--close-timeout", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    clients: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = next(word for word in line.split() if word.startswith("ws://"))
        port = int(url.rsplit(":", 1)[1])
        pids = children(server.pid) if workers > 1 else [server.pid]
        if ns.pin_workers:  # worker i on CPU i: no migrations, the clients float
            for number, pid in enumerate(pids):
                os.sched_setaffinity(pid, {number % CORES})
        per_client = ns.connections // ns.client_processes
        command = [PY, "-m", "benchmarks.workers_echo", "--client", "--port", str(port),
                   "--connections", str(per_client), "--depth", str(ns.depth)]  # fmt: skip
        for _ in range(ns.client_processes):
            clients.append(
                subprocess.Popen(
                    command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        _answers(clients, "ready")
        client_pids = [client.pid for client in clients]
        _tell(clients, "go")
        time.sleep(ns.warmup)
        _tell(clients, "mark")
        before = snapshot(pids, client_pids)
        counted = -sum(_answers(clients, "count"))
        time.sleep(ns.duration)
        _tell(clients, "mark")
        after = snapshot(pids, client_pids)
        counted += sum(_answers(clients, "count"))
        _tell(clients, "stop")
        for client in clients:
            client.wait(30)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    window = after["t"] - before["t"]
    spent = {key: after[key] - before[key] for key in after}
    messages = max(1, counted)
    server_us = 1e6 * spent["server"] / messages
    client_us = 1e6 * spent["client"] / messages
    ceiling = min(workers / server_us, CORES / (server_us + client_us)) * 1e6
    return {
        "msg_per_s": counted / window,
        "server_cpu_us_per_msg": server_us,
        "client_cpu_us_per_msg": client_us,
        "server_cores": spent["server"] / window,
        "client_cores": spent["client"] / window,
        "interrupt_cores": spent["interrupts"] / window,
        "other_cores": max(
            0.0,
            (spent["busy"] - spent["interrupts"] - spent["server"] - spent["client"]) / window,
        ),
        "steal_cores": spent["steal"] / window,
        "worker_cpu_wait": spent["wait"] / window / workers,
        "ceiling_msg_per_s": ceiling,
        "window_s": window,
        "worker_cores": [round(spent[f"worker{n}"] / window, 3) for n in range(len(pids))],
    }


COLUMNS = [
    ("msg_per_s", "msg/s", "{:,.0f}"),
    ("server_cpu_us_per_msg", "server µs CPU / msg", "{:.2f}"),
    ("client_cpu_us_per_msg", "client µs CPU / msg", "{:.2f}"),
    ("server_cores", "server cores", "{:.2f}"),
    ("client_cores", "client cores", "{:.2f}"),
    ("interrupt_cores", "interrupt cores", "{:.2f}"),
    ("other_cores", "other processes' cores", "{:.2f}"),
    ("worker_cpu_wait", "worker CPU wait", "{:.0%}"),
    ("ceiling_msg_per_s", "ceiling msg/s (idle machine)", "{:,.0f}"),
]


def render(summary: dict[str, Any], ns: argparse.Namespace) -> str:
    lines = [
        f"16 B echo, {ns.connections} connections, depth {ns.depth}, "
        f"{ns.client_processes} client processes, {ns.rounds} rounds of {ns.duration} s, "
        f"{CORES} cores (medians)",
        "",
        "| workers | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "--:|" * len(COLUMNS),
    ]
    for workers in (1, 2):
        row = summary[f"workers_{workers}"]
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {workers} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"2 workers / 1 worker: {summary['ratio_2_over_1']:.2f}x measured; "
        f"{summary['ceiling_ratio']:.2f}x at most on this machine idle "
        "(same CPU per message, the clients on the same cores); "
        f"{summary['dedicated_ratio']:.2f}x with the clients elsewhere (2 x S1 / S2)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_echo")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--depth", type=int, default=64, help="messages in flight per connection")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pin-workers", action="store_true", help="worker i on CPU i")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    if ns.client:
        run_client(ns.port, ns.connections, ns.depth)
        return 0
    if ns.quick:
        ns.rounds, ns.duration, ns.warmup = 1, 1.0, 0.5
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(ns.rounds):
        for workers in (1, 2):
            runs[workers].append(one_round(workers, ns))
    summary: dict[str, Any] = {}
    for workers, rounds in runs.items():
        row: dict[str, Any] = {
            key: statistics.median(r[key] for r in rounds) for key, _, _ in COLUMNS
        }
        row["rounds"] = rounds
        summary[f"workers_{workers}"] = row
    one, two = summary["workers_1"], summary["workers_2"]
    summary["ratio_2_over_1"] = two["msg_per_s"] / one["msg_per_s"] if one["msg_per_s"] else 0.0
    summary["ceiling_ratio"] = two["ceiling_msg_per_s"] / one["ceiling_msg_per_s"]
    summary["dedicated_ratio"] = 2 * one["server_cpu_us_per_msg"] / two["server_cpu_us_per_msg"]
    summary["config"] = {
        k: v for k, v in vars(ns).items() if k not in ("client", "port", "output", "quick")
    }
    summary["cpus"] = CORES
    summary["loadavg"] = os.getloadavg()
    print(render(summary, ns))
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
