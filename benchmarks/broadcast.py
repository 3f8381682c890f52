"""`python -m benchmarks.broadcast [--clients 1000] [--rounds 20] [--only a,b]`: one
64 B message to every connected client, socker's drivers beside websockets.

For each implementation, in turn: a server process holding `--clients` connections
(pinned to CPU 0 with taskset) and one client process (picows on uvloop, a compiled
client that is not the bottleneck; pinned to CPU 1). Each round the parent tells
the server to broadcast; the server reads `time.monotonic()` right before the
broadcast call and the client reads it as each copy arrives (CLOCK_MONOTONIC is one
clock for every process on the machine), so:

- last: first send to the last client's receipt (the broadcast's whole cost);
- first: first send to the first receipt (how soon the first copy goes out).

Medians over `--rounds` rounds (split over `--passes` passes that interleave the
implementations, each pass a fresh server and client after `--warmup` rounds),
ratios against websockets' `broadcast()` in the same run. Targets: every socker implementation at
most 1.0x websockets' `last`, asyncio and uvloop at most 0.8x. Results go to
`benchmarks/results/broadcast.json`. Every process has a time budget and stops by
itself; `--quick` is 200 clients and 5 rounds.

Server implementations (`python -m benchmarks.broadcast server NAME N`):
socker-anyio-asyncio, socker-anyio-uvloop, socker-anyio-trio, socker-threaded
(`server.broadcast`), socker-asgi-uvicorn (`App.broadcast`, the App alone under
uvicorn on asyncio, permessage-deflate off), websockets (`websockets.asyncio.server.broadcast`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "broadcast.json"
PY = sys.executable
SIZE = 64
IMPLS = [
    "socker-anyio-asyncio",
    "socker-anyio-uvloop",
    "socker-anyio-trio",
    "socker-threaded",
    "socker-asgi-uvicorn",
    "websockets",
]
BASE = "websockets"
TARGETS = {
    "socker-anyio-asyncio": 0.8,
    "socker-anyio-uvloop": 0.8,
    "socker-anyio-trio": 1.0,
    "socker-threaded": 1.0,
}
#: Seconds a child process lives at most, whatever happens to the parent.
LIFETIME = 300.0


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def payload(round_no: int) -> bytes:
    return round_no.to_bytes(4, "big") + b"x" * (SIZE - 4)


def watchdog() -> None:
    """End this child after LIFETIME seconds, whatever it is doing."""
    timer = threading.Timer(LIFETIME, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


# -- servers: print {"port": P}, then per stdin line "go R": broadcast, print t0 ------


def serve_socker_anyio(backend: str, options: dict[str, Any], n: int) -> None:
    import anyio

    from socker_core import Connection, Flow
    from socker_transports.anyio import serve

    flow = Flow("bench")

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    async def main() -> None:
        async with serve(flow, "127.0.0.1", 0, ping_interval=None) as server:
            emit(port=server.port)
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line.startswith("go"):
                    return
                data = payload(int(line.split()[1]))
                t0 = time.monotonic()
                count = server.broadcast(data)
                t1 = time.monotonic()
                emit(t0=t0, call=t1 - t0, count=count)

    anyio.run(main, backend=backend, backend_options=options)


def serve_socker_threaded(n: int) -> None:
    from socker_core import Connection, Flow
    from socker_transports import threaded

    flow = Flow("bench")

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    with threaded.serve(flow, "127.0.0.1", 0, ping_interval=None) as server:
        emit(port=server.port)
        for line in sys.stdin:
            if not line.startswith("go"):
                break
            data = payload(int(line.split()[1]))
            t0 = time.monotonic()
            count = server.broadcast(data)
            t1 = time.monotonic()
            emit(t0=t0, call=t1 - t0, count=count)


def serve_socker_asgi(n: int) -> None:
    import socket

    import uvicorn

    from socker_core import Connection, Flow
    from socker_transports.asgi import App

    flow = Flow("bench")

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    app = App(flow)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", ws_per_message_deflate=False
        )
        server = uvicorn.Server(config)

        async def rounds() -> None:
            while not server.started:
                await asyncio.sleep(0.01)
            emit(port=sock.getsockname()[1])
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.startswith("go"):
                    server.should_exit = True
                    return
                data = payload(int(line.split()[1]))
                t0 = time.monotonic()
                count = app.broadcast(data)
                t1 = time.monotonic()
                emit(t0=t0, call=t1 - t0, count=count)

        task = loop.create_task(rounds())
        await server.serve(sockets=[sock])
        task.cancel()

    asyncio.run(main())


def serve_websockets(n: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(handler, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            emit(port=port)
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.startswith("go"):
                    return
                data = payload(int(line.split()[1]))
                t0 = time.monotonic()
                broadcast(server.connections, data)
                t1 = time.monotonic()
                emit(t0=t0, call=t1 - t0, count=len(server.connections))

    asyncio.run(main())


def run_server(name: str, n: int) -> int:
    raise_nofile()
    watchdog()
    if name == "socker-anyio-asyncio":
        serve_socker_anyio("asyncio", {}, n)
    elif name == "socker-anyio-uvloop":
        serve_socker_anyio("asyncio", {"use_uvloop": True}, n)
    elif name == "socker-anyio-trio":
        serve_socker_anyio("trio", {}, n)
    elif name == "socker-threaded":
        serve_socker_threaded(n)
    elif name == "socker-asgi-uvicorn":
        serve_socker_asgi(n)
    elif name == "websockets":
        serve_websockets(n)
    else:
        raise SystemExit(f"unknown implementation {name!r}")
    return 0


# -- the client: picows on uvloop ------------------------------------------------------


def run_client(port: int, n: int) -> int:
    """Open `n` connections, print {"ready": n}; then for every round print when its
    first and last copies arrived, once all `n` have."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_nofile()
    watchdog()
    clock = time.monotonic
    rounds: dict[int, list[float]] = {}  # round -> [first, last, count]

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            now = clock()
            round_no = int.from_bytes(frame.get_payload_as_memoryview()[:4], "big")
            seen = rounds.get(round_no)
            if seen is None:
                rounds[round_no] = [now, now, 1]
                seen = rounds[round_no]
            else:
                seen[1] = now
                seen[2] += 1
            if seen[2] == n:
                emit(round=round_no, first=seen[0], last=seen[1])
                del rounds[round_no]

    async def main() -> None:
        url = f"ws://127.0.0.1:{port}/"
        transports = []
        for start in range(0, n, 100):  # in batches: the server's backlog stays small
            batch = await asyncio.gather(
                *(ws_connect(Listener, url) for _ in range(start, min(n, start + 100)))
            )
            transports += [transport for transport, _ in batch]
        emit(ready=len(transports))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for transport in transports:
            transport.disconnect()

    uvloop.run(main())
    return 0


# -- the parent ------------------------------------------------------------------------


def _pinned(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


def _line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line of a child (bounded)."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        raise RuntimeError(f"no answer from {proc.args!r} within {timeout}s")
    parsed: dict[str, Any] = json.loads(result[0])
    return parsed


def measure(name: str, clients: int, rounds: int, warmup: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [*_pinned(0), PY, "-m", "benchmarks.broadcast", "server", name, str(clients)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    client = None
    try:
        port = _line(server, 30)["port"]
        client = subprocess.Popen(
            [*_pinned(1), PY, "-m", "benchmarks.broadcast", "client", str(port), str(clients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert _line(client, 120)["ready"] == clients
        time.sleep(0.2)  # let the last handshakes settle on the server
        lasts, firsts, calls = [], [], []
        assert server.stdin is not None
        for round_no in range(warmup + rounds):
            server.stdin.write(f"go {round_no}\n")
            server.stdin.flush()
            sent = _line(server, 30)
            if sent["count"] != clients:
                raise RuntimeError(f"{name}: broadcast reached {sent['count']} of {clients}")
            got = _line(client, 30)
            if got["round"] != round_no:
                raise RuntimeError(f"{name}: round {got['round']} came for {round_no}")
            if round_no >= warmup:
                lasts.append(got["last"] - sent["t0"])
                firsts.append(got["first"] - sent["t0"])
                calls.append(sent["call"])
            time.sleep(0.02)  # the next round starts from quiet sockets
        return {"last": lasts, "first": firsts, "call": calls}
    finally:
        for proc in (client, server):
            if proc is None:
                continue
            try:
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    base = results.get(BASE, {}).get("last_ms")
    lines = [
        f"broadcast of one {SIZE} B message to {report['clients']} clients "
        f"(median of {report['rounds']} rounds; client: picows on uvloop)",
        "",
        "| server | first send -> last receipt (ms) | -> first receipt (ms) | "
        "broadcast call (ms) | last vs websockets | target |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, row in results.items():
        ratio = "" if not base or name == BASE else f"{row['last_ms'] / base:.2f}x"
        goal = TARGETS.get(name)
        target = ""
        if goal is not None and base:
            target = f"<= {goal}x: " + ("met" if row["last_ms"] / base <= goal else "NOT met")
        lines.append(
            f"| {name} | {row['last_ms']:.2f} | {row['first_ms']:.3f} | {row['call_ms']:.2f} "
            f"| {ratio} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["server"]:
        return run_server(args[1], int(args[2]))
    if args[:1] == ["client"]:
        return run_client(int(args[1]), int(args[2]))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.broadcast")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--only", default=",".join(IMPLS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args(args)
    if opts.quick:
        opts.clients, opts.rounds, opts.warmup, opts.passes = 200, 5, 1, 1
    names = [name for name in opts.only.split(",") if name]
    unknown = set(names) - set(IMPLS)
    if unknown:
        parser.error(f"unknown implementations: {sorted(unknown)}")
    report: dict[str, Any] = {
        "clients": opts.clients,
        "rounds": opts.rounds,
        "size": SIZE,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            # Other work on the machine disturbs the figures: say how busy it was.
            "loadavg_start": os.getloadavg(),
        },
        "command": "python -m benchmarks.broadcast " + " ".join(args),
        "results": {},
    }
    samples: dict[str, dict[str, list[float]]] = {
        name: {"last": [], "first": [], "call": []} for name in names
    }
    # Passes interleave the implementations, so a burst of load elsewhere on the
    # machine hits them all alike; the rounds are split between the passes.
    per_pass = max(1, opts.rounds // opts.passes)
    for number in range(opts.passes):
        for name in names:
            print(f"pass {number + 1}: {name} ...", file=sys.stderr, flush=True)
            got = measure(name, opts.clients, per_pass, opts.warmup)
            for key, values in got.items():
                samples[name][key] += values
    for name in names:
        report["results"][name] = {
            "last_ms": median(samples[name]["last"]) * 1e3,
            "first_ms": median(samples[name]["first"]) * 1e3,
            "call_ms": median(samples[name]["call"]) * 1e3,
            "rounds": len(samples[name]["last"]),
        }
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(render(report))
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
