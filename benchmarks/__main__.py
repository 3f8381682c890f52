"""`python -m benchmarks [--quick]`: socker against its peers, one table.

Every (implementation, scenario, round) runs a fresh echo server in its own
process (`python -m benchmarks.peers NAME`) and the same load client in another
(`python -m benchmarks.client ...`), each bounded in time. Rounds are
interleaved across implementations so machine noise hits all of them alike;
the table shows medians over rounds (each round itself the median of a few
windows), and the targets are ratios between implementations measured in the
same run. Results go to `benchmarks/results/latest.json`.

Scenarios:

- ping-pong round trips per second at 16 B, 1 KiB, 64 KiB, 1 MiB;
- 20,000 pipelined 16 B messages (the client writes all, counts the echoes), msg/s;
- handshakes per second (TCP + upgrade + close handshake, one at a time);
- server RSS growth per idle connection (N connections held open);
- server CPU per message while pipelining (from /proc), and socker's layers
  (wire + core) against raw wsproto in process (`benchmarks.layers`).

Server CPU (user + system, from /proc/PID/stat) is recorded for every scenario
and printed as a second table; each target also shows the same comparison in
CPU per message, which a busy machine disturbs far less than throughput.

Options: `--quick`, `--only a,b` (implementations; prototypes from
`benchmarks.peers.PROTOTYPES` are measured only when named here),
`--scenarios pp16,...,idle,layers`, `--rounds`, `--duration`, `--idle N`,
`--pin` (server and client on two separate CPUs), `--output PATH`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from .peers import OTHERS, PEERS, PROTOTYPES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
PY = sys.executable

#: CPU for servers and CPU for clients (None: no pinning). Set by `main`.
PIN: dict[str, int | None] = {"server": None, "client": None}


def _pinned(role: str) -> Any:
    cpu = PIN[role]
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


IMPLS = list(PEERS)
SOCKER = [name for name in IMPLS if name.startswith("socker-")]
SOCKER_ANYIO = [name for name in SOCKER if name.startswith("socker-anyio-")]
#: Servers with threads per connection (websockets.sync runs three). Each thread costs
#: about three memory mappings and Linux allows 65,530 per process
#: (vm.max_map_count), so these hold at most this many idle connections.
THREADED = {"socker-threaded", "websockets-sync"}
THREADED_IDLE_MAX = 4_000


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    args: tuple[str, ...]
    unit: str


SCENARIOS = [
    Scenario("pp16", "ping-pong 16 B", ("ping-pong", "--size", "16"), "rt/s"),
    Scenario("pp1k", "ping-pong 1 KiB", ("ping-pong", "--size", "1024"), "rt/s"),
    Scenario("pp64k", "ping-pong 64 KiB", ("ping-pong", "--size", "65536"), "rt/s"),
    Scenario("pp1m", "ping-pong 1 MiB", ("ping-pong", "--size", "1048576"), "rt/s"),
    Scenario("pipe", "pipelined 20k x 16 B", ("pipelined", "--count", "20000"), "msg/s"),
    Scenario("hs", "handshakes", ("handshakes",), "conn/s"),
]
BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass(frozen=True)
class Mode:
    rounds: int
    duration: float
    parts: int
    idle: int
    layer_messages: int
    layer_repeats: int
    budget: float  # seconds for the whole run; later work is skipped past it


FULL = Mode(rounds=3, duration=1.0, parts=3, idle=10_000, layer_messages=20_000,
            layer_repeats=5, budget=480.0)  # fmt: skip
QUICK = Mode(rounds=1, duration=0.4, parts=3, idle=1_000, layer_messages=5_000,
             layer_repeats=3, budget=150.0)  # fmt: skip


# -- processes ------------------------------------------------------------------


class Server:
    """One echo server process; stopped by closing its stdin (then SIGTERM, SIGKILL)."""

    def __init__(self, impl: str, lifetime: float) -> None:
        self.impl = impl
        self.proc = subprocess.Popen(
            [PY, "-m", "benchmarks.peers", impl, "--lifetime", str(lifetime)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_pinned("server"),
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        line = _readline(self.proc, timeout)
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{self.impl} did not start: {self.stderr_tail()}")
        self.port = int(line.split()[1])

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        text = self.proc.stderr.read().decode(errors="replace").strip()
        return text.splitlines()[-1] if text else f"exit status {self.proc.returncode}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None:
                stream.close()


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, or "" after `timeout` or at its exit."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(min(0.5, max(0.0, deadline - time.monotonic()))):
                return proc.stdout.readline().decode(errors="replace").strip()
            if proc.poll() is not None:
                return ""
    return ""


def run_client(args: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [PY, "-m", "benchmarks.client", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
        preexec_fn=_pinned("client"),
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"client exit status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, thread count) of a process."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


# -- scenarios --------------------------------------------------------------------


def run_throughput(impl: str, scenario: Scenario, mode: Mode) -> dict[str, Any]:
    server = Server(impl, lifetime=60 + 10 * mode.duration)
    try:
        server.wait_ready()
        args = [*scenario.args, "--port", str(server.port), "--server-pid", str(server.pid)]
        args += ["--duration", str(mode.duration), "--parts", str(mode.parts)]
        return run_client(args, timeout=30 + 10 * mode.duration)
    finally:
        server.stop()


def run_idle(impl: str, n: int) -> dict[str, Any]:
    """Server RSS growth over `n` idle connections (after a warm-up of 100)."""
    server = Server(impl, lifetime=300)
    client: subprocess.Popen[bytes] | None = None
    try:
        server.wait_ready()
        warm = ["idle", "--port", str(server.port), "--count", "100", "--hold", "0"]
        subprocess.run([PY, "-m", "benchmarks.client", *warm], cwd=ROOT, capture_output=True,
                       timeout=60, check=True, preexec_fn=_pinned("client"))  # fmt: skip
        time.sleep(0.5)
        before, threads_before = rss_kib(server.pid)
        hold = ["--count", str(n), "--hold", "60"]
        client = subprocess.Popen(
            [PY, "-m", "benchmarks.client", "idle", "--port", str(server.port), *hold],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_pinned("client"),
        )
        line = _readline(client, 240)
        if not line.startswith("READY"):
            client.kill()
            assert client.stderr is not None
            err = client.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(err[-1] if err else "idle client failed")
        opened, seconds = int(line.split()[1]), float(line.split()[2])
        time.sleep(1.0)
        after, threads_after = rss_kib(server.pid)
        return {
            "value": (after - before) / opened,
            "connections": opened,
            "open_seconds": seconds,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "threads_before": threads_before,
            "threads_after": threads_after,
        }
    finally:
        if client is not None:
            client.kill()
            client.wait(10)
            for stream in (client.stdout, client.stderr):
                if stream is not None:
                    stream.close()
        server.stop()


def run_layers(mode: Mode) -> dict[str, Any]:
    sizes = ["--messages", str(mode.layer_messages), "--repeats", str(mode.layer_repeats)]
    done = subprocess.run(
        [PY, "-m", "benchmarks.layers", *sizes],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else "layers failed")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- report -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits - 1}f}"


def summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for impl, by_scenario in samples.items():
        row: dict[str, Any] = {}
        for key, runs in by_scenario.items():
            values = [r["value"] for r in runs if r.get("value") is not None]
            cpus = [r["server_cpu_us_per_msg"] for r in runs if r.get("server_cpu_us_per_msg")]
            row[key] = median(values) if values else None
            if cpus:
                row[f"{key}_cpu_us"] = median(cpus)
        table[impl] = row
    return table


def targets(table: dict[str, Any], layers: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def value(impl: str, key: str) -> float | None:
        v = table.get(impl, {}).get(key)
        return float(v) if v is not None else None

    def ratio(what: str, impl: str, key: str, base: str, goal: float) -> None:
        a, b = value(impl, key), value(base, key)
        r = a / b if a is not None and b else None
        # The same comparison in server CPU per message (baseline / impl): far less
        # sensitive to a noisy machine than throughput.
        ca, cb = value(impl, f"{key}_cpu_us"), value(base, f"{key}_cpu_us")
        out.append(
            {
                "target": what,
                "impl": impl,
                "scenario": key,
                "baseline": base,
                "ratio": r,
                "cpu_ratio": cb / ca if ca and cb else None,
                "goal": goal,
                "kind": ">=",
                "met": None if r is None else r >= goal,
            }
        )

    ratio("16 B ping-pong vs websockets asyncio", "socker-anyio-trio", "pp16",
          "websockets-asyncio", 1.2)  # fmt: skip
    ratio("16 B ping-pong vs websockets asyncio", "socker-anyio-asyncio", "pp16",
          "websockets-asyncio", 0.9)  # fmt: skip
    ratio("16 B ping-pong vs websockets asyncio", "socker-anyio-uvloop", "pp16",
          "websockets-asyncio", 1.5)  # fmt: skip
    ratio("16 B ping-pong vs websockets sync", "socker-threaded", "pp16", "websockets-sync", 1.0)
    for impl in SOCKER:
        ratio("pipelined vs raw wsproto", impl, "pipe", "raw-wsproto-asyncio", 0.9)
        ratio("pipelined vs trio-websocket", impl, "pipe", "trio-websocket", 5.0)
    for key in ("pp64k", "pp1m"):
        for impl in SOCKER:
            ratio(f"{BY_KEY[key].title} vs raw wsproto", impl, key, "raw-wsproto-asyncio", 1.0)
            ratio(f"{BY_KEY[key].title} vs trio-websocket", impl, key, "trio-websocket", 3.0)
    for impl in SOCKER:
        ratio("handshakes/s vs websockets asyncio", impl, "hs", "websockets-asyncio", 1.2)
    for impl in SOCKER_ANYIO:
        kib = value(impl, "idle")
        out.append(
            {
                "target": "idle connection memory (KiB)",
                "impl": impl,
                "scenario": "idle",
                "value": kib,
                "goal": 12.0,
                "kind": "<=",
                "met": None if kib is None else kib <= 12.0,
            }
        )
    a, b = value("socker-threaded", "idle"), value("websockets-sync", "idle")
    r = a / b if a is not None and b else None
    out.append(
        {
            "target": "idle connection memory vs websockets sync",
            "impl": "socker-threaded",
            "scenario": "idle",
            "baseline": "websockets-sync",
            "ratio": r,
            "goal": 0.5,
            "kind": "<=",
            "met": None if r is None else r <= 0.5,
        }
    )
    if layers:
        for pattern, row in layers.items():
            over = row["overhead"]
            out.append(
                {
                    "target": f"socker layers' CPU over raw wsproto ({pattern.replace('_', ' ')})",
                    "impl": "wire+core",
                    "scenario": "layers",
                    "value": over,
                    "goal": 0.10,
                    "kind": "<=",
                    "met": over <= 0.10,
                }
            )
    return out


COLUMNS = [
    ("pp16", "pp 16B"),
    ("pp1k", "pp 1KiB"),
    ("pp64k", "pp 64KiB"),
    ("pp1m", "pp 1MiB"),
    ("pipe", "pipelined"),
    ("hs", "handshk/s"),
    ("idle", "KiB/idle"),
    ("pipe_cpu_us", "µs CPU/msg"),
]


CPU_COLUMNS = COLUMNS[:6]


def render(report: dict[str, Any]) -> str:
    table = report["table"]
    lines = []
    width = max(len(i) for i in [*IMPLS, *PROTOTYPES]) + 2
    head = "implementation".ljust(width) + "".join(f"{title:>11}" for _, title in COLUMNS)
    lines += [head, "-" * len(head)]
    for impl in [i for i in [*IMPLS, *PROTOTYPES] if i in table]:
        row = table[impl]
        cells = "".join(f"{_fmt(row.get(key)):>11}" for key, _ in COLUMNS)
        lines.append(impl.ljust(width) + cells)
    lines.append("")
    lines.append(
        "pp = ping-pong round trips/s; pipelined = msg/s (20,000 x 16 B); handshk/s = open+close "
        "per s;"
    )
    lines.append(
        "KiB/idle = server RSS growth per idle connection; µs CPU/msg = server CPU per "
        "pipelined message."
    )
    lines.append("")
    lines.append(
        "server CPU (user+system, all threads) in µs per round trip / message / handshake:"
    )
    head = "implementation".ljust(width) + "".join(f"{title:>11}" for _, title in CPU_COLUMNS)
    lines += [head, "-" * len(head)]
    for impl in [i for i in [*IMPLS, *PROTOTYPES] if i in table]:
        row = table[impl]
        cells = "".join(f"{_fmt(row.get(key + '_cpu_us')):>11}" for key, _ in CPU_COLUMNS)
        lines.append(impl.ljust(width) + cells)
    layers = report.get("layers")
    if layers:
        lines.append("")
        lines.append(
            "socker layers (wire + core) vs raw wsproto, in process, µs CPU per 16 B echo:"
        )
        for pattern, row in layers.items():
            lines.append(
                f"  {pattern.replace('_', ' '):<14} raw {row['raw_us_per_msg']:.2f}  "
                f"socker {row['socker_us_per_msg']:.2f}  overhead {row['overhead'] * 100:+.0f}%"
            )
    lines.append("")
    lines.append(
        "targets (ratios from this run; [CPU/msg] = baseline's server CPU per message over "
        "this one's):"
    )
    for t in report["targets"]:
        if t["met"] is None and t["impl"] not in table:
            continue  # not measured in this run (--only)
        status = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        if "ratio" in t:
            measured = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
            goal = f"{t['kind']} {t['goal']}x {t['baseline']}"
        else:
            v = t["value"]
            if t["scenario"] == "layers":
                measured = f"{v * 100:+.0f}%"
                goal = f"{t['kind']} +{t['goal'] * 100:.0f}%"
            else:
                measured = "-" if v is None else f"{v:.1f}"
                goal = f"{t['kind']} {t['goal']}"
        cpu = t.get("cpu_ratio")
        extra = f"  [CPU/msg: {cpu:.2f}x]" if cpu else ""
        lines.append(f"  {status} {t['impl']:<21} {t['target']:<40} {measured:>8}  ({goal}){extra}")
    errors = report.get("errors") or []
    if errors:
        lines.append("")
        lines.append("errors:")
        lines += [f"  {e}" for e in errors[:30]]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="about 1-2 minutes")
    parser.add_argument("--only", default="", help="comma-separated implementations")
    parser.add_argument("--scenarios", default="", help="comma-separated: "
                        + ",".join([s.key for s in SCENARIOS] + ["idle", "layers"]))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per measurement")
    parser.add_argument("--idle", type=int, default=0, help="idle connections (memory)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--pin", action="store_true",
                        help="pin servers and clients to two separate CPUs")  # fmt: skip
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        PIN["server"], PIN["client"] = cpus[0], cpus[1]

    mode = QUICK if args.quick else FULL
    mode = Mode(
        rounds=args.rounds or mode.rounds,
        duration=args.duration or mode.duration,
        parts=mode.parts,
        idle=args.idle or mode.idle,
        layer_messages=mode.layer_messages,
        layer_repeats=mode.layer_repeats,
        budget=mode.budget,
    )
    only = args.only.split(",") if args.only else []
    unknown = [i for i in only if i not in PEERS and i not in PROTOTYPES and i not in OTHERS]
    if unknown:
        parser.error(f"unknown implementation(s): {', '.join(unknown)}")
    impls = [i for i in [*IMPLS, *PROTOTYPES, *OTHERS] if i in only] if only else list(IMPLS)
    wanted = set(args.scenarios.split(",")) if args.scenarios else None
    scenarios = [s for s in SCENARIOS if wanted is None or s.key in wanted]
    started = time.monotonic()
    errors: list[str] = []
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {i: {} for i in impls}
    broken: set[str] = set()

    def over_budget() -> bool:
        return time.monotonic() - started > mode.budget

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    for rnd in range(mode.rounds):
        order = impls[rnd % len(impls) :] + impls[: rnd % len(impls)] if impls else []
        for impl in order:
            for scenario in scenarios:
                if impl in broken or over_budget():
                    continue
                try:
                    result = run_throughput(impl, scenario, mode)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
                    errors.append(f"round {rnd + 1} {impl} {scenario.key}: {exc}")
                    log(f"{impl} {scenario.key}: FAILED {exc}")
                    if "did not start" in str(exc):
                        broken.add(impl)
                    continue
                samples[impl].setdefault(scenario.key, []).append(result)
                log(f"round {rnd + 1} {impl:<22} {scenario.key:<6} {_fmt(result['value']):>8}")

    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if fd_limit == resource.RLIM_INFINITY:
        fd_limit = 1 << 20
    if wanted is None or "idle" in wanted:
        for impl in impls:
            if impl in broken or over_budget():
                continue
            try:
                n = min(mode.idle, THREADED_IDLE_MAX) if impl in THREADED else mode.idle
                n = min(n, fd_limit - 200)  # servers and the client raise their soft limit
                result = run_idle(impl, n)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
                errors.append(f"{impl} idle: {exc}")
                log(f"{impl} idle: FAILED {exc}")
                continue
            samples[impl]["idle"] = [result]
            log(f"idle {impl:<22} {result['value']:.1f} KiB/conn over {result['connections']}")

    layers: dict[str, Any] | None = None
    if (wanted is None or "layers" in wanted) and not over_budget():
        try:
            layers = run_layers(mode)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
            errors.append(f"layers: {exc}")
    if over_budget():
        errors.append(f"time budget of {mode.budget:.0f} s reached: later measurements skipped")

    table = summarize(samples)
    report: dict[str, Any] = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine(),
        "mode": mode.__dict__,
        "seconds": round(time.monotonic() - started, 1),
        "table": table,
        "layers": layers,
        "samples": samples,
        "errors": errors,
    }
    report["targets"] = targets(table, layers)
    text = render(report)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    tmp.replace(out)
    m = report["machine"]
    print(
        f"\n{m['nproc']} cores, {m['cpu']}, Python {m['python']}; "
        f"{report['seconds']:.0f} s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
