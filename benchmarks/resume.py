"""`python -m benchmarks.resume`: what resume costs.

- `latency`: time from a TCP reset (through a loopback proxy) to the client's
  `on_resume`, p50/p99 over `--drops` drops, per driver (anyio-asyncio,
  anyio-uvloop, anyio-trio, threaded). Measured twice: with the default
  reconnect backoff (the first retry waits a uniform 25-50 ms, by design) and
  with the backoff set to zero (TCP connect + handshake + resume + replay).
- `memory`: bytes the server holds per detached session (anyio on asyncio, the
  driver's lingering connection object included), from tracemalloc, for
  `--sessions` raw clients that open a resumable connection and reset it.
- `wire`: microseconds per message through a server Wire (frames in, echo out),
  plain vs resume-negotiated (counting, acks every 32 messages, retention).

Figures are noisy on a shared machine: compare the columns of one run.
`--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from statistics import median
from typing import Any

from socker_core import Connection, Flow, MemorySessionStore, _resume
from socker_transports.wire import Options, Wire

DRIVERS = ("anyio-asyncio", "anyio-uvloop", "anyio-trio", "threaded")


# -- a loopback proxy that can reset its connections ------------------------------------


class ResetProxy:
    """Forwards 127.0.0.1:port -> target; `reset()` RSTs every live connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(("127.0.0.1", self.target))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.pairs.append((client, server))
            thread = threading.Thread(target=self._pump, args=(client, server))
            self.threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self.stopping:
                try:
                    readable, _, _ = select.select(list(peers), [], [], 0.05)
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            return
                        peers[sock].sendall(data)
                except (OSError, ValueError):
                    return
        finally:
            for sock in (client, server):
                sock.close()

    def reset(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def stop(self) -> None:
        self.stopping = True
        self.reset()
        self.listener.close()
        for thread in self.threads:
            thread.join(5.0)


# -- latency -----------------------------------------------------------------------------


def _flows(resumed: Callable[[], None]) -> tuple[Flow, Flow]:
    server = Flow("bench-resume", resume_window=60.0)

    @server.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return message == b"bye"

    client = Flow("bench-client")
    client.on_open(lambda conn: conn.send(b"hello"))

    @client.on_resume
    def again(conn: Connection) -> None:
        conn.send(b"again")  # a message each way after every resume
        resumed()

    @client.step
    def sink(conn: Connection, message: bytes) -> bool:
        return False

    return server, client


@contextlib.contextmanager
def _server(driver: str, flow: Flow) -> Iterator[int]:
    if driver == "threaded":
        from socker_transports import threaded

        threaded_server = threaded.serve(flow, "127.0.0.1", 0)
        try:
            yield threaded_server.port
        finally:
            threaded_server.shutdown()
        return
    from anyio.from_thread import start_blocking_portal

    from socker_transports import anyio as socker_anyio

    backend, options = {
        "anyio-asyncio": ("asyncio", {}),
        "anyio-uvloop": ("asyncio", {"use_uvloop": True}),
        "anyio-trio": ("trio", {}),
    }[driver]
    with (
        start_blocking_portal(backend, options) as portal,
        portal.wrap_async_context_manager(socker_anyio.serve(flow, "127.0.0.1", 0)) as server,
    ):
        yield server.port


@contextlib.contextmanager
def _client(driver: str, url: str, flow: Flow) -> Iterator[Callable[[], None]]:
    """Runs the client in the background; yields `close()`."""
    if driver == "threaded":
        from socker_transports import threaded

        with threaded.connect(url, flow, reconnect=True) as client:
            yield lambda: client.send(b"bye")
        return
    from anyio.from_thread import start_blocking_portal

    from socker_transports import anyio as socker_anyio

    backend, options = {
        "anyio-asyncio": ("asyncio", {}),
        "anyio-uvloop": ("asyncio", {"use_uvloop": True}),
        "anyio-trio": ("trio", {}),
    }[driver]
    with (
        start_blocking_portal(backend, options) as portal,
        portal.wrap_async_context_manager(socker_anyio.connect(url, flow, reconnect=True)) as c,
    ):
        yield lambda: portal.call(c.send, b"bye")


def latency(driver: str, drops: int, backoff: bool) -> dict[str, float]:
    resumed = threading.Event()
    stamps: list[float] = []

    def on_resume() -> None:
        stamps.append(time.perf_counter())
        resumed.set()

    server_flow, client_flow = _flows(on_resume)
    saved = _resume.RECONNECT_BASE
    if not backoff:
        _resume.RECONNECT_BASE = 0.0
    samples: list[float] = []
    try:
        with _server(driver, server_flow) as port:
            proxy = ResetProxy(port)
            try:
                with _client(driver, f"ws://127.0.0.1:{proxy.port}/", client_flow) as finish:
                    time.sleep(0.05)
                    for _ in range(drops):
                        resumed.clear()
                        started = time.perf_counter()
                        proxy.reset()
                        if not resumed.wait(10.0):
                            raise RuntimeError(f"{driver}: no resume within 10 s")
                        samples.append(stamps[-1] - started)
                    finish()
            finally:
                proxy.stop()
    finally:
        _resume.RECONNECT_BASE = saved
    samples.sort()
    return {
        "p50_ms": 1000 * median(samples),
        "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "drops": len(samples),
    }


# -- memory per detached session --------------------------------------------------------


def _open_and_reset(port: int) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: socker.resume.v1\r\n\r\n"
        ).encode()
    )
    got = b""
    while b'"window"' not in got:  # the 101 and the "session" message
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed")
        got += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def memory(sessions: int) -> dict[str, float]:
    from anyio.from_thread import start_blocking_portal

    from socker_transports import anyio as socker_anyio

    flow = Flow("detached", resume_window=300.0)
    flow.add(lambda conn, message: False, name="wait")
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(socker_anyio.serve(flow, "127.0.0.1", 0)) as server,
    ):
        _open_and_reset(server.port)  # warm up
        time.sleep(0.2)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(sessions):
            _open_and_reset(server.port)
        end = time.monotonic() + 30.0
        while time.monotonic() < end:
            detached = portal.call(lambda: sum(1 for s in server._sessions if s.wire.detached))
            if detached >= sessions + 1:
                break
            time.sleep(0.05)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        count = len(server.session_store)
        portal.call(server.close)
    return {"bytes_per_session": grown / sessions, "sessions": sessions, "in_store": count}


# -- wire cost per message --------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x82, 0x80 | len(payload))) + key + masked


def wire_cost(messages: int, resumable: bool) -> float:
    flow = Flow("echo", resume_window=30.0 if resumable else None)

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    store = MemorySessionStore()
    wire = Wire.server(flow, 0.0, Options(ping_interval=None), sessions=store)
    protocols = "Sec-WebSocket-Protocol: socker.resume.v1\r\n" if resumable else ""
    wire.receive_data(
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{protocols}\r\n"
        ).encode(),
        0.0,
    )
    wire.data_to_send()
    batch = _frame(b"x" * 16) * 64
    rounds = messages // 64
    started = time.perf_counter()
    for _ in range(rounds):
        wire.receive_data(batch, 1.0)
        wire.data_to_send()
        if resumable and wire.stepper is not None and wire.stepper.replay is not None:
            wire.stepper.replay.ack(wire.stepper.replay.sent)  # the peer's acks
    return 1e6 * (time.perf_counter() - started) / (rounds * 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="*", default=["latency", "memory", "wire"])
    parser.add_argument("--drops", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    if "latency" in args.what:
        print(f"drop -> resumed ({args.drops} drops; TCP reset through a loopback proxy)")
        print(f"{'driver':15} {'p50 ms':>8} {'p99 ms':>8}   {'no backoff p50':>15} {'p99':>8}")
        for driver in args.drivers.split(","):
            with_backoff = latency(driver, args.drops, True)
            raw = latency(driver, args.drops, False)
            out[driver] = {"default_backoff": with_backoff, "no_backoff": raw}
            print(
                f"{driver:15} {with_backoff['p50_ms']:8.1f} {with_backoff['p99_ms']:8.1f}"
                f"   {raw['p50_ms']:15.2f} {raw['p99_ms']:8.2f}"
            )
    if "memory" in args.what:
        figures = memory(args.sessions)
        out["memory"] = figures
        print(
            f"memory per detached session (anyio-asyncio server, {args.sessions} sessions): "
            f"{figures['bytes_per_session']:.0f} bytes"
        )
    if "wire" in args.what:
        plain, resumable = [], []
        for _ in range(5):  # interleaved, so machine noise hits both alike
            plain.append(wire_cost(args.messages, False))
            resumable.append(wire_cost(args.messages, True))
        out["wire"] = {"plain_us": median(plain), "resumable_us": median(resumable)}
        print(
            f"server Wire, 16 B echo: plain {median(plain):.3f} us/msg, "
            f"resumable {median(resumable):.3f} us/msg "
            f"({median(resumable) / median(plain):.2f}x)"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
