"""`python -m benchmarks.hostile [--quick] [--parts throughput,flood,handshake,linger,cap]`

Hostile peers (issue 14): socker's drivers beside the `websockets` server under
the same attacks, each server in its own process on 127.0.0.1, every loop bounded
in count and time.

- throughput: small-message (16 B) pipelined echo throughput and server CPU per
  message, socker with the default `frames_per_turn` (64) against the same server
  with the budget switched off (`frames_per_turn=None`: every frame of a read
  handled at once, as before), rounds interleaved in one run;
- flood: one peer floods 1-byte messages (or one message in 1-byte fragments)
  while a witness completes short flows (connect, 4 steps, bye, close): the
  witness's flow times (p50 / p99 / worst) and how many it completed;
- handshake: the status each server answers to upgrade requests with a body,
  both framings, folding, HTTP/1.0 and 2.0, a TLS ClientHello and bare LF, and
  how long it took (an answer only after open_timeout is a 408);
- linger: trickling handshakes cut by open_timeout (0.5 s here): how many peers,
  still sending, read the 408 and then an orderly EOF rather than a reset (socker
  also with `linger_timeout=None`, as before lingering);
- cap: with max_connections=40 (socker; websockets has no such option), 50
  connections: how many are served, refused with 503, and how fast.

Prints tables and writes `benchmarks/results/hostile.json`. Figures on a shared
machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import KEY, Reader, client_frame, cpu_seconds, request_bytes

HOST = "127.0.0.1"
PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "hostile.json"
SOCKER = ["socker-asyncio", "socker-uvloop", "socker-trio", "socker-threaded"]
IMPLS = [*SOCKER, "websockets"]
SCRIPT = (
    (b"hi witness", b"scene"),
    (b"ready", b"offer"),
    (b"answer:witness", b"connected"),
    (b"spawn", b"spawned"),
)
CAP = 40


# -- the servers (child processes) ---------------------------------------------------


def _socker_routes() -> Any:
    from socker_core import Connection, Flow

    def game() -> Flow:
        flow = Flow("game")
        replies = dict(SCRIPT)
        expected = [message for message, _ in SCRIPT]

        @flow.step
        def steps(conn: Connection, message: bytes) -> bool:
            index = getattr(conn.state, "index", 0)
            if index < len(expected) and (index == 0 or message == expected[index]):
                conn.send(replies[expected[index]])
                conn.state.index = index + 1
            return message == b"bye"

        return flow

    echo = Flow("echo")

    @echo.step
    def back(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    return {"/": echo, "/game": game(), "/witness": game()}


async def _websockets_handler(ws: Any) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        if ws.request.path == "/":
            async for message in ws:
                await ws.send(message)
            return
        replies = dict(SCRIPT)
        expected = [message for message, _ in SCRIPT]
        index = 0
        async for message in ws:
            if index < len(expected) and (index == 0 or message == expected[index]):
                await ws.send(replies[expected[index]])
                index += 1
            if message == b"bye":
                await ws.close(1000, "flow complete")
                return
    except ConnectionClosed:
        pass


def serve(impl: str, options: dict[str, Any], lifetime: float) -> None:
    import logging

    logging.getLogger("socker").setLevel(logging.ERROR)  # the 503 refusals: one line each

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    if impl == "websockets":
        import asyncio

        from websockets.asyncio.server import serve as ws_serve

        async def run_ws() -> None:
            async with ws_serve(
                _websockets_handler,
                HOST,
                0,
                compression=None,
                max_size=1 << 20,
                open_timeout=options.get("open_timeout", 10.0),
            ) as server:
                ready(next(iter(server.sockets)).getsockname()[1])
                await asyncio.sleep(lifetime)

        asyncio.run(run_ws())
        return
    routes = _socker_routes()
    if impl == "socker-threaded":
        from socker_transports import threaded

        with threaded.serve(routes, HOST, 0, **options) as server:
            ready(server.port)
            time.sleep(lifetime)
        return
    import anyio

    from socker_transports.anyio import serve as socker_serve

    async def run_anyio() -> None:
        async with socker_serve(routes, HOST, 0, **options) as server:
            ready(server.port)
            await anyio.sleep(lifetime)

    backend = impl.removeprefix("socker-")
    backend_options = {"use_uvloop": True} if backend == "uvloop" else {}
    anyio.run(
        run_anyio,
        backend="asyncio" if backend == "uvloop" else backend,
        backend_options=backend_options,
    )


class Server:
    """A server child process (for 120 s at most): `with Server(impl, **options) as
    server: server.port`."""

    def __init__(self, impl: str, **options: Any) -> None:
        lifetime = 120.0
        self.impl = impl
        command = [PY, "-m", "benchmarks.hostile", "serve", impl, json.dumps(options)]
        command.append(str(lifetime))
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"{impl} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- raw peers -----------------------------------------------------------------------


def connect(port: int, path: str, timeout: float = 10.0) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request_bytes(port, path))
    reader = Reader(sock)
    reader.handshake()
    return sock, reader


def witness_flow(port: int) -> float:
    started = time.perf_counter()
    sock, reader = connect(port, "/witness")
    try:
        for message, reply in SCRIPT:
            sock.sendall(client_frame(message))
            opcode, pos, n = reader.frame()
            got = bytes(reader.buf[pos : pos + n])
            if got != reply:
                raise RuntimeError(f"witness got {got!r} (opcode {opcode})")
        sock.sendall(client_frame(b"bye"))
        opcode, _, _ = reader.frame()
        if opcode != 0x8:
            raise RuntimeError("no close after bye")
        sock.sendall(client_frame(b"\x03\xe8", 0x8))
        while sock.recv(4096):
            pass
    finally:
        sock.close()
    return time.perf_counter() - started


def flood(port: int, kind: str, seconds: float, megabytes: float) -> dict[str, Any]:
    """One peer floods /game while the witness completes flows (as in the tests)."""
    if kind == "messages":
        first, chunk = b"", client_frame(b"x") * 10_000
    else:
        first = bytes([0x02, 0x81]) + b"\x00\x00\x00\x00" + b"x"  # unfinished, masked
        chunk = (bytes([0x00, 0x81]) + b"\x00\x00\x00\x00" + b"x") * 10_000
    sock, reader = connect(port, "/game")
    sock.sendall(client_frame(b"hi flooder"))
    reader.frame()
    sent = 0
    cut = False
    stop = time.monotonic() + seconds

    def run() -> None:
        nonlocal sent, cut
        try:
            sock.sendall(first)
            while time.monotonic() < stop and sent < megabytes * 1e6:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            cut = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.1)
    times: list[float] = []
    failures = 0
    while time.monotonic() < stop and len(times) < 5000:
        try:
            times.append(witness_flow(port))
        except (OSError, RuntimeError):
            failures += 1
            break
    thread.join(seconds + 15)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    ordered = sorted(times) or [float("nan")]
    return {
        "flows": len(times),
        "failures": failures,
        "p50_ms": ordered[len(ordered) // 2] * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "worst_ms": ordered[-1] * 1e3,
        "flooded_mb": sent / 1e6,
        "cut_by_server": cut,
    }


def exchange(port: int, data: bytes, timeout: float = 15.0) -> tuple[int, float, bool]:
    """(HTTP status or 0, seconds to the answer, ended in an orderly EOF)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        started = time.perf_counter()
        try:
            sock.sendall(data)
        except OSError:
            return 0, time.perf_counter() - started, False
        got = b""
        orderly = True
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            orderly = False
        except TimeoutError:
            orderly = False
        elapsed = time.perf_counter() - started
    parts = got.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, elapsed, orderly


def upgrade(port: int, *lines: str, version: str = "HTTP/1.1") -> bytes:
    head = [
        f"GET /witness {version}",
        f"Host: {HOST}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY.decode()}",
        "Sec-WebSocket-Version: 13",
        *lines,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


BODY = client_frame(b"smuggled")
HANDSHAKES: dict[str, Callable[[int], bytes]] = {
    "content-length body": lambda p: upgrade(p, f"Content-Length: {len(BODY)}") + BODY,
    "chunked body": lambda p: upgrade(p, "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "both framings": lambda p: upgrade(p, "Content-Length: 5", "Transfer-Encoding: chunked"),
    "line folding": lambda p: upgrade(p, "X-Folded: a", " b"),
    "HTTP/1.0": lambda p: upgrade(p, version="HTTP/1.0"),
    "HTTP/2.0": lambda p: upgrade(p, version="HTTP/2.0"),
    "TLS ClientHello": lambda p: bytes.fromhex("160301020001") + os.urandom(64),
    "bare-LF request": lambda p: upgrade(p).replace(b"\r\n", b"\n"),
}


def trickle(port: int) -> str:
    """A trickling handshake that keeps sending after the answer: "408, EOF" when it
    read the 408 and then an orderly EOF; else what it got ("408, reset", "reset",
    "closed without an answer", ...)."""
    request = upgrade(port)
    with socket.create_connection((HOST, port), timeout=10) as sock:
        end = time.monotonic() + 10
        sent = 0
        while time.monotonic() < end and sent < len(request):
            sock.sendall(request[sent : sent + 1])
            sent += 1
            if select.select([sock], [], [], 0.02)[0]:
                break
        orderly = True
        for byte in request[sent : sent + 3]:
            time.sleep(0.02)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                orderly = False
                break
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            orderly = False
    answer = got[:12].decode("latin-1").removeprefix("HTTP/1.1 ") or "no answer"
    return f"{answer}, {'EOF' if orderly else 'reset'}"


# -- the parts -----------------------------------------------------------------------


def part_throughput(rounds: int, duration: float) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for impl in SOCKER:
            budgets: tuple[tuple[str, dict[str, Any]], ...] = (
                ("budget", {}),
                ("unlimited", {"frames_per_turn": None}),
            )
            for label, options in budgets:
                with Server(impl, **options) as server:
                    command = [PY, "-m", "benchmarks.client", "pipelined", "--port"]
                    command += [str(server.port), "--duration", str(duration)]
                    command += ["--server-pid", str(server.pid)]
                    out = subprocess.run(
                        command, cwd=ROOT, capture_output=True, text=True, timeout=120
                    )
                    data = json.loads(out.stdout)
                entry = results.setdefault(f"{impl} {label}", {"rate": [], "cpu": []})
                entry["rate"].append(data["value"])
                entry["cpu"].append(data["server_cpu_us_per_msg"])
    table = {}
    print("\nthroughput: 20,000 pipelined 16 B messages (msg/s, server CPU us/msg), medians")
    for impl in SOCKER:
        on, off = results[f"{impl} budget"], results[f"{impl} unlimited"]
        rate_on, rate_off = statistics.median(on["rate"]), statistics.median(off["rate"])
        cpu_on, cpu_off = statistics.median(on["cpu"]), statistics.median(off["cpu"])
        # The least CPU of the rounds: what interference from other processes
        # (a shared machine) inflates least.
        best_on, best_off = min(on["cpu"]), min(off["cpu"])
        table[impl] = {
            "budget_cpu_us_best": best_on,
            "unlimited_cpu_us_best": best_off,
            "cpu_ratio_best": best_on / best_off,
            "samples": {"budget": on, "unlimited": off},
            "budget_msg_s": rate_on,
            "unlimited_msg_s": rate_off,
            "ratio": rate_on / rate_off,
            "budget_cpu_us": cpu_on,
            "unlimited_cpu_us": cpu_off,
            "cpu_ratio": cpu_on / cpu_off,
        }
        print(
            f"  {impl:16} budget {rate_on:9.0f} ({cpu_on:5.1f} us)  unlimited {rate_off:9.0f}"
            f" ({cpu_off:5.1f} us)  ratio {rate_on / rate_off:5.3f}, cpu {cpu_on / cpu_off:5.3f}"
            f" (least cpu: {best_on:4.1f} / {best_off:4.1f} us = {best_on / best_off:5.3f})"
        )
    return table


def part_flood(seconds: float, megabytes: float) -> dict[str, Any]:
    table: dict[str, Any] = {}
    print(f"\nflood: {seconds}s / {megabytes} MB of 1-byte frames; witness flow times")
    for kind in ("messages", "fragments"):
        for impl in IMPLS:
            with Server(impl) as server:
                cpu0 = cpu_seconds(server.pid)
                row = flood(server.port, kind, seconds, megabytes)
                row["server_cpu_s"] = cpu_seconds(server.pid) - cpu0
            table[f"{kind} {impl}"] = row
            print(
                f"  {kind:9} {impl:16} flows {row['flows']:4}  p50 {row['p50_ms']:7.1f} ms"
                f"  p99 {row['p99_ms']:7.1f} ms  worst {row['worst_ms']:7.1f} ms"
                f"  flooded {row['flooded_mb']:.1f} MB  cut {row['cut_by_server']}"
            )
    return table


def part_handshake() -> dict[str, Any]:
    table: dict[str, Any] = {}
    print("\nhandshake: status (seconds to answer), open_timeout 5 s")
    for impl in IMPLS:
        with Server(impl, open_timeout=5.0) as server:
            row = {}
            for name, make in HANDSHAKES.items():
                status, elapsed, _ = exchange(server.port, make(server.port))
                row[name] = {"status": status, "seconds": elapsed}
            table[impl] = row
        cells = "  ".join(f"{n}: {c['status']} ({c['seconds']:.2f})" for n, c in row.items())
        print(f"  {impl:16} {cells}")
    return table


def part_linger(count: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    print(f"\nlinger: {count} trickling handshakes, open_timeout 0.5 s: answer, then EOF/reset")
    runs: list[tuple[str, str, dict[str, Any]]] = [(impl, impl, {}) for impl in IMPLS]
    runs += [(f"{impl} no linger", impl, {"linger_timeout": None}) for impl in SOCKER]
    for label, impl, options in runs:
        with Server(impl, open_timeout=0.5, **options) as server:
            threads = []
            results: list[str] = []

            def one(port: int = server.port, results: list[str] = results) -> None:
                results.append(trickle(port))

            for _ in range(count):
                threads.append(threading.Thread(target=one))
                threads[-1].start()
            for thread in threads:
                thread.join(30)
        outcomes = {o: results.count(o) for o in sorted(set(results))}
        table[label] = outcomes
        print(f"  {label:26} " + "  ".join(f"{o}: {n}" for o, n in outcomes.items()))
    return table


def part_cap(total: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    print(f"\ncap: {total} connections, socker max_connections={CAP}")
    for impl in IMPLS:
        options = {} if impl == "websockets" else {"max_connections": CAP}
        with Server(impl, **options) as server:
            held = []
            refused = 0
            times = []
            for _ in range(total):
                started = time.perf_counter()
                try:
                    held.append(connect(server.port, "/game"))
                except Exception:
                    refused += 1
                times.append(time.perf_counter() - started)
            for sock, _ in held:
                sock.close()
        table[impl] = {"served": len(held), "refused": refused, "worst_s": max(times)}
        print(f"  {impl:16} served {len(held)}  refused {refused}  worst {max(times):.3f}s")
    return table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        serve(args[1], json.loads(args[2]), float(args[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="throughput,flood,handshake,linger,cap")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS))
    ns = parser.parse_args(args)
    parts = ns.parts.split(",")
    rounds = ns.rounds or (1 if ns.quick else 3)
    report: dict[str, Any] = {"command": " ".join(["python -m benchmarks.hostile", *args])}
    if "throughput" in parts:
        report["throughput"] = part_throughput(rounds, 0.3 if ns.quick else 1.0)
    if "flood" in parts:
        report["flood"] = part_flood(1.0 if ns.quick else 3.0, 1.0 if ns.quick else 4.0)
    if "handshake" in parts:
        report["handshake"] = part_handshake()
    if "linger" in parts:
        report["linger"] = part_linger(6 if ns.quick else 20)
    if "cap" in parts:
        report["cap"] = part_cap(CAP + 10)
    Path(ns.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
