"""`python -m benchmarks.cluster_broadcast [--clients 2000] [--rounds 100] [--quick]`:
one 64 B broadcast to every client of a room spread over 2 worker processes that
share one Redis, socker beside python-socketio (its `AsyncRedisManager`) in the same
run.

For each system, in turn (`--passes` passes interleave them, each a fresh setup):

1. a fresh `redis-server` on 127.0.0.1 and a free port, no persistence, started and
   stopped here (benchmarks/redis_server.py, the engine tests' helper);
2. 2 workers on one port (SO_REUSEPORT: the kernel spreads the connections):
   socker, `socker serve benchmarks.cluster_servers:FLOW --workers 2 --engine URL`
   (each worker opens its own Redis engine); python-socketio,
   `socketio.AsyncServer(client_manager=AsyncRedisManager(url))` in two processes,
   websocket transport only, served by uvicorn (ASGI, its websockets implementation;
   `--sio-http aiohttp` for aiohttp, which took about 15% more CPU per round here)
   on uvloop (`--sio-loop`), socker on asyncio (`--socker-backend`), each system's
   best (benchmarks/cluster_servers.py);
3. `--client-processes` load clients (benchmarks/cluster_client.py: picows, compiled,
   on uvloop) holding `--clients` connections, each of them in the room, each told
   which worker holds it (the table shows the split).

The servers and Redis are pinned to `--server-cpus` and the clients to
`--client-cpus` with taskset (default CPU 0 and CPU 1: on this 2-core machine the two
workers share one core, the same for both systems; the clients never compete with
them).

How a round is triggered and timed, the same for both systems: the first client
process reads `time.monotonic()` (t0) and sends a trigger message (socker: binary
`go:RRRRRRRR`; socket.io: the event `42["go","RRRRRRRR"]`) on one of its
connections; the worker that receives it broadcasts 64 B to the room cluster-wide
(socker: `conn.server.broadcast(data, room=...)`, which hands the publication to the
worker's ordered publisher: Redis numbers it and every worker, this one included,
delivers what its room subscription brings; socket.io: `await sio.emit("b", data,
room=...)`, which sends to its own worker's members at once and publishes on Redis
for the others). The payload is the round in 8 hex digits and 56 `x`: socker sends it
as a 64 B binary message, socket.io as its text event `42["b","..."]` (73 B; a
binary payload would cost socket.io a second frame per message). Every client
process reads `time.monotonic()` as each copy arrives (CLOCK_MONOTONIC: one clock for
every process of the machine). Per round:

- last: t0 to the last connection's receipt (trigger sent -> everyone has it);
- first: t0 to the first receipt.

Before the warm-up, rounds are played (up to `SETTLE_ROUNDS`) until one reaches
every client: a member whose join has not reached Redis yet would miss a publication
made before it, by design (it joined after it in the room's order).

The table shows p50 and p99 of `last` over the rounds after `--warmup` rounds per
pass, the ratio socker / socketio of each (target: socker's p50 at most 0.5x
socketio's), the CPU per round of the workers and of Redis (/proc/PID/stat, over the
measured rounds) and its ratio, and how busy the clients were (their CPU per round
against the round's time: near 100% would mean the client bounds the figure). Below
it: how the kernel split the connections over the workers, how long workers and
clients waited for a CPU per round (/proc/PID/schedstat), and how many cores other
processes of the machine took meanwhile (/proc/stat; a shared machine). The
wall-clock rounds move with that load from run to run; the CPU per round much less.

Each round starts `--gap` seconds after the previous one ended; every wait is bounded
(start-up, settle and round timeouts). Every child runs under `setpriv --pdeathsig
TERM`, so it ends with the benchmark even when that is killed with SIGKILL, and the
clients and socket.io workers also end by themselves after their `LIFETIME`.
`--quick` is 200 clients and 10 rounds. Results go to
`benchmarks/results/cluster_broadcast.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from benchmarks.cluster_servers import socker_command
from benchmarks.machine import (
    children,
    cpu_seconds,
    machine_seconds,
    run_queue_seconds,
    with_parent,
)
from benchmarks.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "cluster_broadcast.json"
PY = sys.executable
SYSTEMS = ["socker", "python-socketio"]
BASE = "python-socketio"
TARGET = 0.5
WORKERS = 2
#: Seconds to wait for a server or the clients to get going, and for one round.
START_TIMEOUT = 120.0
ROUND_TIMEOUT = 30.0
#: Before the warm-up: rounds tried (each waited for this long) until one is complete.
SETTLE_ROUNDS = 20
SETTLE_TIMEOUT = 3.0


class NoAnswer(RuntimeError):
    """A child printed nothing within the time it had."""


class Lines:
    """The JSON lines a child prints, read by a thread into a queue (bounded waits)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.other: list[str] = []
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.other = [*self.other[-4:], line.rstrip()]
            try:
                self.queue.put(json.loads(line))
            except ValueError:
                self.queue.put({"text": line.rstrip()})  # `socker serve`'s announcement
        self.queue.put(None)

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise NoAnswer(f"no answer from {self.proc.args!r} within {timeout}s") from None
        if item is None:
            self.queue.put(None)
            raise RuntimeError(f"{self.proc.args!r} ended ({self.other})")
        return item


def pinned(cpus: str) -> list[str]:
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus]
    return []


@contextmanager
def child(args: list[str], *, stdin: bool = False) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A child process printing JSON lines; SIGTERM (then SIGKILL) at the end."""
    proc = subprocess.Popen(
        [*with_parent(), *args],  # a benchmark killed -9 leaves no child running
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield proc, Lines(proc)
    finally:
        if stdin and proc.stdin is not None:
            try:
                proc.stdin.write("stop\n")
                proc.stdin.close()
            except OSError:
                pass
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_servers(
    system: str, redis_url: str, ns: argparse.Namespace, stack: ExitStack
) -> tuple[int, list[int]]:
    """Start `system`'s 2 workers; (port, worker pids)."""
    pin = pinned(ns.server_cpus)
    if system == "socker":
        proc, lines = stack.enter_context(
            child([*pin, *socker_command(redis_url, WORKERS, ns.socker_backend)])
        )
        announced = lines.next(START_TIMEOUT).get("text", "")
        url = next((word for word in announced.split() if word.startswith("ws://")), None)
        if url is None:
            raise RuntimeError(f"socker serve said {announced!r}")
        return int(url.rsplit(":", 1)[1]), children(proc.pid)
    module = [PY, "-m", "benchmarks.cluster_servers"]
    port = free_port()
    pids = []
    for _ in range(WORKERS):
        _, lines = stack.enter_context(
            child([*pin, *module, "sio", "--redis", redis_url, "--port", str(port),
                   "--loop", ns.sio_loop, "--http", ns.sio_http])
        )  # fmt: skip
        pids.append(int(lines.next(START_TIMEOUT)["ready"]))
    return port, pids


def account(workers: list[int], redis: int, clients: list[int]) -> dict[str, float]:
    """CPU seconds so far: the workers', Redis's, the clients', the workers' run-queue
    wait, and the whole machine's busy and interrupt time (benchmarks/machine.py)."""
    busy, interrupts, _steal = machine_seconds()
    return {
        "t": time.monotonic(),
        "workers": sum(cpu_seconds(pid) for pid in workers),
        "redis": cpu_seconds(redis),
        "clients": sum(cpu_seconds(pid) for pid in clients),
        "wait": sum(run_queue_seconds(pid) for pid in workers),
        "clients_wait": sum(run_queue_seconds(pid) for pid in clients),
        "busy": busy,
        "interrupts": interrupts,
    }


def quantile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]


class RoundLost(RuntimeError):
    """A round did not reach every client in time."""


def play_round(
    clients: list[tuple[subprocess.Popen[str], Lines]], round_no: int, timeout: float
) -> tuple[float, list[dict[str, Any]]]:
    """Trigger round `round_no` (through the first client) and wait until every client
    has it: (t0, each client's line). Lines of earlier rounds that completed late are
    passed over."""
    trigger = clients[0][0].stdin
    assert trigger is not None
    trigger.write(f"go {round_no}\n")
    trigger.flush()
    end = time.monotonic() + timeout

    def expect(lines: Lines, key: str) -> dict[str, Any]:
        while True:
            try:
                line = lines.next(max(0.0, end - time.monotonic()))
            except NoAnswer:
                message = f"round {round_no} did not reach every client in {timeout}s"
                raise RoundLost(message) from None
            if line.get("duplicates"):
                raise RuntimeError(f"{line['duplicates']} copies reached a connection twice")
            if line.get(key) == round_no:
                return line
            if line.get("round", round_no) >= round_no:
                raise RuntimeError(f"round {round_no}: unexpected {line}")

    t0 = float(expect(clients[0][1], "sent")["t0"])
    return t0, [expect(lines, "round") for _, lines in clients]


def settle(
    clients: list[tuple[subprocess.Popen[str], Lines]], system: str
) -> tuple[int, list[dict[str, Any]]]:
    """Play rounds until one reaches every client; (the next round number, its lines)."""
    for round_no in range(SETTLE_ROUNDS):
        try:
            _, got = play_round(clients, round_no, SETTLE_TIMEOUT)
        except RoundLost:
            continue
        return round_no + 1, got
    raise RuntimeError(f"{system}: no round reached every client in {SETTLE_ROUNDS} tries")


def measure(system: str, ns: argparse.Namespace) -> dict[str, Any]:
    """One fresh setup of `system`: warm-up rounds, then `ns.per_pass` measured ones."""
    protocol = "socker" if system == "socker" else "sio"
    with ExitStack() as stack:
        redis = stack.enter_context(
            RedisServer.temporary(prefix=[*with_parent(), *pinned(ns.server_cpus)])
        )
        assert redis.proc is not None
        port, worker_pids = start_servers(system, redis.url, ns, stack)
        share = [ns.clients // ns.client_processes] * ns.client_processes
        share[0] += ns.clients - sum(share)
        clients = []
        for number, count in enumerate(share):
            args = [*pinned(ns.client_cpus), PY, "-m", "benchmarks.cluster_client", protocol,
                    str(port), str(count)]  # fmt: skip
            args += ["--trigger"] * (number == 0)
            clients.append(stack.enter_context(child(args, stdin=True)))
        split: dict[str, int] = {}
        for _, lines in clients:
            ready = lines.next(START_TIMEOUT)
            for pid, count in ready["workers"].items():
                split[pid] = split.get(pid, 0) + count
        if len(split) != WORKERS:
            raise RuntimeError(f"{system}: the clients reached {len(split)} workers, not {WORKERS}")
        trigger = clients[0][0].stdin
        assert trigger is not None
        client_pids = [proc.pid for proc, _ in clients]
        # The room is ready once one round reached every client (a worker whose engine
        # join is still queued would miss a publication made before it).
        round_no, got = settle(clients, system)
        client_cpu = [line["cpu"] for line in got]
        samples: dict[str, list[float]] = {"last": [], "first": [], "client_cpu": []}
        before = account(worker_pids, redis.proc.pid, client_pids)
        for number in range(ns.warmup + ns.per_pass):
            if number == ns.warmup:
                before = account(worker_pids, redis.proc.pid, client_pids)
            t0, got = play_round(clients, round_no + number, ROUND_TIMEOUT)
            spent = sum(line["cpu"] - before for line, before in zip(got, client_cpu, strict=True))
            client_cpu = [line["cpu"] for line in got]
            if number >= ns.warmup:
                samples["last"].append(max(line["last"] for line in got) - t0)
                samples["first"].append(min(line["first"] for line in got) - t0)
                samples["client_cpu"].append(spent)
            time.sleep(ns.gap)
        after = account(worker_pids, redis.proc.pid, client_pids)
        used = {key: (after[key] - before[key]) / ns.per_pass for key in after}
        window = after["t"] - before["t"]
        others = used["busy"] - used["interrupts"] - used["workers"] - used["redis"]
        used["other_cores"] = max(0.0, (others - used["clients"]) * ns.per_pass / window)
        return {**samples, **{key: [value] for key, value in used.items()}, "split": [split]}


def summarize(rows: dict[str, list[Any]]) -> dict[str, Any]:
    last, first = rows["last"], rows["first"]
    return {
        "last_p50_ms": median(last) * 1e3,
        "last_p99_ms": quantile(last, 99) * 1e3,
        "first_p50_ms": median(first) * 1e3,
        "first_p99_ms": quantile(first, 99) * 1e3,
        "workers_cpu_ms_per_round": median(rows["workers"]) * 1e3,
        "redis_cpu_ms_per_round": median(rows["redis"]) * 1e3,
        "interrupt_ms_per_round": median(rows["interrupts"]) * 1e3,
        "workers_wait_ms_per_round": median(rows["wait"]) * 1e3,
        "clients_wait_ms_per_round": median(rows["clients_wait"]) * 1e3,
        "other_cores": median(rows["other_cores"]),
        "client_cpu_ms_per_round": median(rows["client_cpu"]) * 1e3,
        "client_busy": median(c / t for c, t in zip(rows["client_cpu"], last, strict=True)),
        "rounds": len(last),
        "worker_split": [sorted(split.values()) for split in rows["split"]],
    }


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    base = results.get(BASE)
    lines = [
        f"64 B broadcast to {report['clients']} clients in one room over {WORKERS} workers "
        f"sharing one Redis ({report['rounds']} rounds per system; client: picows on uvloop)",
        "",
        "| server | last p50 (ms) | last p99 (ms) | first p50 (ms) | p50 vs socketio "
        "| p99 vs socketio | workers CPU / round (ms) | Redis CPU / round (ms) "
        "| CPU vs socketio | client busy | target |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, row in results.items():
        p50 = p99 = cpu = target = ""
        if base and name != BASE:
            r50 = row["last_p50_ms"] / base["last_p50_ms"]
            r99 = row["last_p99_ms"] / base["last_p99_ms"]
            mine = row["workers_cpu_ms_per_round"] + row["redis_cpu_ms_per_round"]
            theirs = base["workers_cpu_ms_per_round"] + base["redis_cpu_ms_per_round"]
            p50, p99 = f"{r50:.2f}x", f"{r99:.2f}x"
            cpu = f"{mine / theirs:.2f}x" if theirs else "-"  # a tiny run: under one tick
            target = f"<= {TARGET}x: " + ("met" if r50 <= TARGET else "NOT met")
        lines.append(
            f"| {name} | {row['last_p50_ms']:.2f} | {row['last_p99_ms']:.2f} "
            f"| {row['first_p50_ms']:.2f} | {p50} | {p99} "
            f"| {row['workers_cpu_ms_per_round']:.2f} | {row['redis_cpu_ms_per_round']:.2f} "
            f"| {cpu} | {row['client_busy']:.0%} | {target} |"
        )
    lines.append("")
    for name, row in results.items():
        lines.append(
            f"{name}: workers split {row['worker_split']}; waited for a CPU, per round: "
            f"workers {row['workers_wait_ms_per_round']:.1f} ms, clients "
            f"{row['clients_wait_ms_per_round']:.1f} ms; other processes took "
            f"{row['other_cores']:.2f} cores"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_broadcast")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=100, help="measured, over all passes")
    parser.add_argument("--warmup", type=int, default=5, help="rounds per pass")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between rounds")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--server-cpus", default="0", help="taskset list; '' = unpinned")
    parser.add_argument("--client-cpus", default="1", help="taskset list; '' = unpinned")
    parser.add_argument("--socker-backend", default="asyncio")
    parser.add_argument("--sio-loop", default="uvloop", choices=["asyncio", "uvloop"])
    parser.add_argument("--sio-http", default="uvicorn", choices=["aiohttp", "uvicorn"])
    parser.add_argument("--only", default=",".join(SYSTEMS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args(args)
    if ns.quick:
        ns.clients, ns.rounds, ns.warmup, ns.passes = 200, 10, 2, 1
    names = [name for name in ns.only.split(",") if name]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    if not 1 <= ns.client_processes <= ns.clients:
        parser.error("--client-processes must be between 1 and --clients")
    ns.per_pass = max(1, ns.rounds // ns.passes)
    report: dict[str, Any] = {
        "clients": ns.clients,
        "rounds": ns.per_pass * ns.passes,
        "workers": WORKERS,
        "config": {k: v for k, v in vars(ns).items() if k not in ("output", "quick", "per_pass")},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            # Other work on the machine disturbs the figures: say how busy it was.
            "loadavg_start": os.getloadavg(),
        },
        "command": "python -m benchmarks.cluster_broadcast " + " ".join(args),
        "results": {},
    }
    rows: dict[str, dict[str, list[Any]]] = {name: {} for name in names}
    for number in range(ns.passes):
        for name in names:
            print(f"pass {number + 1}: {name} ...", file=sys.stderr, flush=True)
            for key, values in measure(name, ns).items():
                rows[name].setdefault(key, []).extend(values)
    report["results"] = {name: summarize(rows[name]) for name in names}
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(render(report))
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
