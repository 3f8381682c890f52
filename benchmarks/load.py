"""`python -m benchmarks.load [--clients 1000] [--idle 10000] [--quick]`: socker under load.

One socker anyio server (asyncio backend) in its own process, on 127.0.0.1, and
client processes (socker's anyio client, asyncio) in others:

- flows: `--clients` clients start at once (released together by a signal), each
  running the 4-step game handshake (hello -> scene, ready -> offer, answer ->
  connected, spawn/bye -> complete, close 1000). Every flow must complete on both
  sides; none may be refused. Records time per flow (connect to close result,
  p50 / p99) and the total time from the first connect to the last close.
- idle: a fresh server; `--idle` connections opened (at most `--concurrency` mid-
  handshake per client process) and held open in a step that waits. Server RSS
  (VmRSS) is read before (after one warm-up flow) and once the server reports
  every connection open; the growth divided by the connections is the cost of
  an idle connection.

Every process raises RLIMIT_NOFILE (soft to hard, or higher when allowed) and has
its own time budget after which it stops by itself; the listener uses anyio's
backlog (65536, capped by net.core.somaxconn). The whole run stays under 5 minutes
(`--quick`: 200 clients, 1,000 idle, under 1 minute). Prints a table and writes
`benchmarks/results/load.json`; exits 1 if any flow or connection failed.

Children are driven by signals: SIGUSR1 asks the server for stats (one JSON line),
starts the flow clients, and tells idle clients to close; SIGTERM stops the server
(1001 to whatever is still open).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
PY = sys.executable

#: File descriptors a process needs beyond its connections (stdio, loop, imports).
FD_MARGIN = 256

#: The load clients' open_timeout: generous, so a client queued behind a busy server
#: is not counted as a failure by the client itself (the server keeps its defaults,
#: open_timeout 10 s included). Idle clients also send no pings of their own (the
#: server's keepalive still runs), so the clients' keepalive does not load the server.
CLIENT_OPEN_TIMEOUT = 30.0


# -- shared helpers ------------------------------------------------------------------


def emit(**fields: Any) -> None:
    """One JSON line on stdout (children talk to the parent this way)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (the machine may be shared: wall times
    then stretch, CPU times much less)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE to at least `needed` if allowed (else to the hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:  # needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- the flows (both sides of the game handshake, and an idle pair) --------------------


def game_server(ended: Counter[str]) -> Any:
    from socker_core import Connection, Flow

    flow = Flow("game-server")

    @flow.step
    def hello(conn: Connection, message: bytes) -> bool:
        conn.send(b"scene:players=2;objects=17")
        return True

    @flow.step
    def handshake(conn: Connection, message: bytes) -> bool:
        if message != b"ready":
            return False
        conn.send(b"offer:v=0 o=server")
        return True

    @flow.step
    def answer(conn: Connection, message: bytes) -> bool:
        if not message.startswith(b"answer:"):
            return False
        conn.send(b"connected")
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool:
        if message == b"spawn":
            conn.send(b"spawned:player-2")
        conn.state.done = message == b"bye"
        return bool(conn.state.done)

    @flow.on_close
    def count(conn: Connection) -> None:
        done = getattr(conn.state, "done", False) and conn.close_code == 1000
        ended["complete" if done else f"incomplete {conn.close_code}"] += 1

    return flow


def game_client(ended: Counter[str]) -> Any:
    from socker_core import Connection, Flow

    flow = Flow("game-client")

    @flow.on_open
    def say_hi(conn: Connection) -> None:
        conn.send(b"hi player")

    @flow.step
    def scene(conn: Connection, message: bytes) -> bool:
        conn.send(b"ready")
        return True

    @flow.step
    async def offer(conn: Connection, message: bytes) -> bool:
        conn.send(b"answer:v=0 o=client")
        return True

    @flow.step
    def connected(conn: Connection, message: bytes) -> bool:
        if message != b"connected":
            return False
        conn.send(b"spawn")
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool:
        if message == b"spawned:player-2":
            conn.state.spawned = True
            conn.send(b"bye")
        return False  # the server completes the flow and closes with 1000

    @flow.on_close
    def count(conn: Connection) -> None:
        done = getattr(conn.state, "spawned", False) and conn.close_code == 1000
        ended["complete" if done else f"incomplete {conn.close_code}"] += 1

    return flow


def idle_flow(name: str) -> Any:
    from socker_core import Connection, Flow

    flow = Flow(name)

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    return flow


# -- child processes -------------------------------------------------------------------


async def _server_main(budget: float, need_fds: int) -> None:
    import anyio

    from socker_transports.anyio import serve

    nofile = raise_nofile(need_fds)
    ended: Counter[str] = Counter()
    routes = {"/game": game_server(ended), "/idle": idle_flow("idle-server")}
    with (
        anyio.move_on_after(budget),
        anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals,
    ):
        async with serve(routes, "127.0.0.1", 0, close_timeout=5.0) as server:
            emit(event="listening", port=server.port, nofile=nofile)
            async for signum in signals:
                if signum != signal.SIGUSR1:
                    break
                rss = rss_kib()
                gc.collect()  # live memory, as far as the allocator gives it back
                emit(
                    event="stats",
                    open=len(server.connections),
                    active=server.active,
                    ended=dict(ended),
                    rss_after_gc=rss_kib()["VmRSS"],
                    **rss,
                )
    emit(event="stopped", ended=dict(ended))


async def _flows_main(url: str, count: int, budget: float) -> None:
    import anyio

    from socker_transports.anyio import run_client

    nofile = raise_nofile(count + FD_MARGIN)
    ended: Counter[str] = Counter()
    flow = game_client(ended)
    durations: list[float] = []
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    bounds: list[float] = []
    cpu = time.process_time()

    async def one() -> None:
        started = time.monotonic()
        try:
            result = await run_client(url, flow, open_timeout=CLIENT_OPEN_TIMEOUT)
        except (OSError, anyio.BrokenResourceError) as exc:
            errors[f"{type(exc).__name__}: {exc}"] += 1
            return
        finished = time.monotonic()
        codes[str(result.code)] += 1
        if result.ok:
            durations.append(finished - started)
            bounds.extend((started, finished))

    with (
        anyio.move_on_after(budget),
        anyio.open_signal_receiver(signal.SIGUSR1) as signals,
    ):
        emit(event="ready", nofile=nofile)
        async for _ in signals:  # go
            break
        cpu = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
    cpu = time.process_time() - cpu
    emit(
        event="result",
        durations=durations,
        first=min(bounds, default=0.0),
        last=max(bounds, default=0.0),
        codes=dict(codes),
        ended=dict(ended),
        errors=dict(errors),
        cpu_s=cpu,
    )


async def _idle_main(url: str, count: int, concurrency: int, budget: float) -> None:
    import anyio

    from socker_transports.anyio import HandshakeError, connect

    nofile = raise_nofile(count + FD_MARGIN)
    flow = idle_flow("idle-client")
    gate = anyio.Semaphore(concurrency)
    release = anyio.Event()
    attempted = anyio.Event()
    tally: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    def settle(outcome: str) -> None:
        tally[outcome] += 1
        if tally["opened"] + tally["failed"] == count:
            attempted.set()

    async def hold() -> None:
        await gate.acquire()
        holding = True
        try:
            async with connect(
                url, flow, open_timeout=CLIENT_OPEN_TIMEOUT, ping_interval=None
            ) as client:
                gate.release()
                holding = False
                settle("opened")
                await release.wait()
                result = await client.close(1000)
                codes[str(result.code)] += 1
        except (OSError, HandshakeError, anyio.BrokenResourceError, TimeoutError) as exc:
            errors[f"{type(exc).__name__}: {exc}"] += 1
            if holding:
                settle("failed")
        finally:
            if holding:
                gate.release()

    with (
        anyio.move_on_after(budget),
        anyio.open_signal_receiver(signal.SIGUSR1) as signals,
    ):
        async with anyio.create_task_group() as tg:
            started = time.monotonic()
            for _ in range(count):
                tg.start_soon(hold)
            await attempted.wait()
            emit(
                event="open",
                opened=tally["opened"],
                failed=tally["failed"],
                seconds=time.monotonic() - started,
                errors=dict(errors),
                nofile=nofile,
            )
            async for _ in signals:  # close everything
                break
            release.set()
    emit(event="closed", codes=dict(codes), errors=dict(errors))


def _child(argv: list[str]) -> int:
    import anyio

    parser = argparse.ArgumentParser(prog="benchmarks.load (child)")
    parser.add_argument("role", choices=["_server", "_flows", "_idle"])
    parser.add_argument("--url", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--budget", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "_server":
        anyio.run(_server_main, args.budget, args.count + FD_MARGIN, backend="asyncio")
    elif args.role == "_flows":
        anyio.run(_flows_main, args.url, args.count, args.budget, backend="asyncio")
    else:
        anyio.run(
            _idle_main, args.url, args.count, args.concurrency, args.budget, backend="asyncio"
        )
    return 0


# -- the parent ------------------------------------------------------------------------


class Budget:
    """The run's time budget: every wait is bounded by what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float = math.inf) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


class Child:
    """A child process speaking JSON lines on stdout; stderr goes to a temp file."""

    def __init__(self, role: str, budget: float, **opts: object) -> None:
        args = [PY, "-m", "benchmarks.load", role, "--budget", f"{budget:.1f}"]
        for key, value in opts.items():
            args += [f"--{key}", str(value)]
        self.role = role
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0
        )
        self.buffer = b""

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def read(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line with this `event`, within `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self.buffer:
                    line, _, self.buffer = self.buffer.partition(b"\n")
                    message: dict[str, Any] = json.loads(line)
                    if message.get("event") == event:
                        return message
                left = end - time.monotonic()
                if left <= 0:
                    break
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    self.buffer += chunk
                elif self.proc.poll() is not None:
                    break
        raise RuntimeError(f"{self.role}: no {event!r} within {timeout:.0f}s{self.tail()}")

    def tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return (": " + " | ".join(lines[-3:])) if lines else ""

    def stop(self, timeout: float) -> None:
        """Wait for the exit (bounded), then kill this child if it is still running."""
        try:
            self.proc.wait(max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@dataclass
class Run:
    budget: Budget
    children: list[Child] = field(default_factory=list)

    def spawn(self, role: str, **opts: object) -> Child:
        child = Child(role, self.budget.left(), **opts)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGTERM)
        for child in self.children:
            child.stop(min(self.budget.left(), 10.0))
        self.children.clear()


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _merge(counters: list[dict[str, int]]) -> dict[str, int]:
    merged: Counter[str] = Counter()
    for counter in counters:
        merged.update(counter)
    return dict(merged)


def _start_server(run: Run, idle: int) -> tuple[Child, str]:
    server = run.spawn("_server", count=idle)
    ready = server.read("listening", run.budget.left(30))
    if ready["nofile"] < idle + FD_MARGIN:
        raise RuntimeError(f"server RLIMIT_NOFILE is {ready['nofile']}, need {idle + FD_MARGIN}")
    return server, f"ws://127.0.0.1:{ready['port']}"


def _warm_up(url: str) -> None:
    """One flow in this process, so the server has run every code path once."""
    import anyio

    from socker_transports.anyio import run_client

    ended: Counter[str] = Counter()

    async def once() -> None:
        with anyio.fail_after(10):
            result = await run_client(url + "/game", game_client(ended))
        if not result.ok:
            raise RuntimeError(f"warm-up flow failed: {result}")

    anyio.run(once, backend="asyncio")


def _stats(server: Child, budget: Budget) -> dict[str, Any]:
    server.signal(signal.SIGUSR1)
    return server.read("stats", budget.left(10))


def run_flows(run: Run, clients: int, procs: int) -> dict[str, Any]:
    server, url = _start_server(run, clients)
    try:
        _warm_up(url)
        workers = [run.spawn("_flows", url=url + "/game", count=n) for n in _split(clients, procs)]
        for worker in workers:
            worker.read("ready", run.budget.left(30))
        server_cpu = cpu_seconds(server.proc.pid)
        for worker in workers:
            worker.signal(signal.SIGUSR1)
        results = [worker.read("result", run.budget.left()) for worker in workers]
        server_cpu = cpu_seconds(server.proc.pid) - server_cpu
        stats = _stats(server, run.budget)
    finally:
        run.stop_all()
    durations = [d for result in results for d in result["durations"]]
    server_ended = dict(stats["ended"])
    server_ended["complete"] = server_ended.get("complete", 0) - 1  # the warm-up flow
    report: dict[str, Any] = {
        "clients": clients,
        "client_processes": len(workers),
        "completed": len(durations),
        "client_ended": _merge([r["ended"] for r in results]),
        "server_ended": server_ended,
        "close_codes": _merge([r["codes"] for r in results]),
        "errors": _merge([r["errors"] for r in results]),
    }
    if durations:
        first = min(r["first"] for r in results if r["durations"])
        last = max(r["last"] for r in results if r["durations"])
        report.update(
            p50_ms=percentile(durations, 50) * 1e3,
            p99_ms=percentile(durations, 99) * 1e3,
            max_ms=max(durations) * 1e3,
            total_s=last - first,
            flows_per_s=len(durations) / (last - first),
            server_cpu_ms_per_flow=server_cpu / len(durations) * 1e3,
            client_cpu_ms_per_flow=sum(r["cpu_s"] for r in results) / len(durations) * 1e3,
        )
    report["ok"] = (
        report["completed"] == clients
        and report["client_ended"] == {"complete": clients}
        and server_ended == {"complete": clients}
        and not report["errors"]
    )
    return report


def run_idle(run: Run, idle: int, procs: int, concurrency: int) -> dict[str, Any]:
    server, url = _start_server(run, idle)
    try:
        _warm_up(url)
        before = _stats(server, run.budget)
        holders = [
            run.spawn("_idle", url=url + "/idle", count=n, concurrency=concurrency)
            for n in _split(idle, procs)
        ]
        opened = [holder.read("open", run.budget.left()) for holder in holders]
        total = sum(o["opened"] for o in opened)
        after = _stats(server, run.budget)
        while after["open"] < total and run.budget.left() > 0:
            time.sleep(0.1)
            after = _stats(server, run.budget)
        for holder in holders:
            holder.signal(signal.SIGUSR1)
        closed = [holder.read("closed", run.budget.left(60)) for holder in holders]
    finally:
        run.stop_all()
    held = after["open"]
    report: dict[str, Any] = {
        "connections": idle,
        "client_processes": len(holders),
        "opened": total,
        "held_by_server": held,
        "open_seconds": max(o["seconds"] for o in opened),
        "rss_before_kib": before["VmRSS"],
        "rss_after_kib": after["VmRSS"],
        "kib_per_connection": (after["VmRSS"] - before["VmRSS"]) / held if held else None,
        "rss_before_after_gc_kib": before["rss_after_gc"],
        "rss_after_after_gc_kib": after["rss_after_gc"],
        "kib_per_connection_after_gc": (
            (after["rss_after_gc"] - before["rss_after_gc"]) / held if held else None
        ),
        "server_hwm_kib": after["VmHWM"],
        "close_codes": _merge([c["codes"] for c in closed]),
        "errors": _merge([o["errors"] for o in opened] + [c["errors"] for c in closed]),
    }
    report["ok"] = total == idle and held == idle and not report["errors"]
    return report


def machine() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    return {
        "nproc": os.cpu_count(),
        "loadavg": read("/proc/loadavg"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "somaxconn": read("/proc/sys/net/core/somaxconn"),
        "ip_local_port_range": read("/proc/sys/net/ipv4/ip_local_port_range"),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def render(report: dict[str, Any]) -> str:
    flows, idle = report.get("flows"), report.get("idle")
    rows: list[tuple[str, str]] = []
    if flows:
        rows += [
            ("concurrent flows", f"{flows['completed']}/{flows['clients']} completed, "
             f"{flows['client_processes']} client process(es)"),
            ("time per flow p50", f"{flows.get('p50_ms', math.nan):.1f} ms"),
            ("time per flow p99", f"{flows.get('p99_ms', math.nan):.1f} ms"),
            ("total time", f"{flows.get('total_s', math.nan):.2f} s "
             f"({flows.get('flows_per_s', math.nan):.0f} flows/s)"),
            ("CPU per flow", f"server {flows.get('server_cpu_ms_per_flow', math.nan):.2f} ms, "
             f"client {flows.get('client_cpu_ms_per_flow', math.nan):.2f} ms"),
            ("flow failures", str(flows["errors"] or "none")),
        ]  # fmt: skip
    if idle:
        rows += [
            ("idle connections", f"{idle['held_by_server']}/{idle['connections']} held "
             f"(opened in {idle['open_seconds']:.1f} s)"),
            ("server RSS", f"{idle['rss_before_kib'] / 1024:.1f} MiB -> "
             f"{idle['rss_after_kib'] / 1024:.1f} MiB"),
            ("RSS per idle connection", f"{idle['kib_per_connection'] or math.nan:.1f} KiB "
             f"({idle['kib_per_connection_after_gc'] or math.nan:.1f} KiB after gc.collect())"),
            ("idle failures", str(idle["errors"] or "none")),
        ]  # fmt: skip
    width = max((len(name) for name, _ in rows), default=12)
    lines = ["socker load: anyio server (asyncio) on 127.0.0.1"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"  {'whole run':<{width}}  {report['elapsed_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return _child(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--clients", type=int, help="concurrent flows (default 1000)")
    parser.add_argument("--idle", type=int, help="idle connections held (default 10000)")
    parser.add_argument("--quick", action="store_true", help="200 clients, 1000 idle, < 1 min")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="idle handshakes in flight per process (50)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clients = args.clients or (200 if args.quick else 1000)
    idle = args.idle if args.idle is not None else (1000 if args.quick else 10_000)
    seconds = 55.0 if args.quick else 290.0
    run = Run(Budget(seconds))
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "errors": []}
    try:
        if clients > 0:
            report["flows"] = run_flows(run, clients, args.client_procs)
        if idle > 0:
            report["idle"] = run_idle(run, idle, args.client_procs, args.concurrency)
    except (RuntimeError, OSError) as exc:
        report["errors"].append(str(exc))
    finally:
        run.stop_all()
    report["elapsed_s"] = time.monotonic() - started
    report["machine"]["loadavg_end"] = machine()["loadavg"]
    ok = not report["errors"] and all(
        report[phase]["ok"] for phase in ("flows", "idle") if phase in report
    )
    report["ok"] = ok
    print(render(report))
    for error in report["errors"]:
        print(f"  ERROR: {error}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"  written to {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
