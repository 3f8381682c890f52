"""The one load client every server is measured with.

Blocking sockets on 127.0.0.1 and hand-built frames: every client frame is
encoded once before the clock starts (one fixed, random masking key), replies
are parsed with a minimal frame reader. The client does as little per message as
Python allows, so the figures compare servers, not clients.

Run as `python -m benchmarks.client SCENARIO --port P [...]`; prints one JSON object
on stdout. Every loop is bounded by a count and by a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from statistics import median
from typing import Any

HOST = "127.0.0.1"
MASK = os.urandom(4)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # any 16-byte value, base64
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class BenchError(RuntimeError):
    """The server did something the benchmark did not expect."""


def _mask(payload: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    key = int.from_bytes((MASK * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + MASK + _mask(payload)


CLOSE_FRAME = client_frame(struct.pack("!H", 1000), OP_CLOSE)


def request_bytes(port: int, path: str = "/") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Reader:
    """Reads server frames (unmasked) from a blocking socket into one buffer."""

    __slots__ = ("buf", "end", "sock", "start", "view")

    def __init__(self, sock: socket.socket, capacity: int = 1 << 16) -> None:
        self.sock = sock
        self.buf = bytearray(capacity)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _fill(self, need: int) -> None:
        """Make at least `need` bytes available at `start`."""
        while self.end - self.start < need:
            if self.start + need > len(self.buf):
                size = self.end - self.start
                if need > len(self.buf):
                    buf = bytearray(max(need, 2 * len(self.buf)))
                    buf[:size] = self.view[self.start : self.end]
                    self.view.release()
                    self.buf = buf
                    self.view = memoryview(buf)
                else:
                    self.buf[:size] = self.buf[self.start : self.end]
                self.start, self.end = 0, size
            got = self.sock.recv_into(self.view[self.end :])
            if not got:
                raise BenchError("connection closed by the server")
            self.end += got

    def handshake(self) -> None:
        while True:
            head_end = self.buf.find(b"\r\n\r\n", self.start, self.end)
            if head_end >= 0:
                break
            if self.end - self.start > 16384:
                raise BenchError("handshake response too long")
            self._fill(self.end - self.start + 1)
        status = bytes(self.buf[self.start : self.start + 12])
        if not status.startswith(b"HTTP/1.1 101"):
            raise BenchError(f"handshake refused: {status!r}")
        self.start = head_end + 4

    def frame(self) -> tuple[int, int, int]:
        """Next complete frame: (opcode, payload start in `buf`, payload length).
        The payload stays valid until the next call."""
        self._fill(2)
        b0 = self.buf[self.start]
        b1 = self.buf[self.start + 1]
        n = b1 & 0x7F
        head = 2
        if n == 126:
            self._fill(4)
            n = int.from_bytes(self.buf[self.start + 2 : self.start + 4], "big")
            head = 4
        elif n == 127:
            self._fill(10)
            n = int.from_bytes(self.buf[self.start + 2 : self.start + 10], "big")
            head = 10
        if b1 & 0x80:
            raise BenchError("server frames must not be masked")
        self._fill(head + n)
        pos = self.start + head
        self.start = pos + n
        if not b0 & 0x80:
            raise BenchError("fragmented reply (the echo servers send whole messages)")
        return b0 & 0x0F, pos, n

    def message(self) -> int:
        """Length of the next data message, answering nothing (no pings expected)."""
        while True:
            opcode, _, n = self.frame()
            if opcode in (0x1, 0x2):
                return n
            if opcode == OP_CLOSE:
                raise BenchError("server closed the connection")
            # pings/pongs: ignored (a keepalive ping cannot arrive within a window)


def open_ws(port: int, timeout: float = 10.0) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request_bytes(port))
    reader = Reader(sock)
    reader.handshake()
    return sock, reader


def close_ws(sock: socket.socket, reader: Reader, timeout: float = 5.0) -> None:
    """Close handshake, then wait (bounded) for the server to end TCP first."""
    sock.settimeout(timeout)
    try:
        sock.sendall(CLOSE_FRAME)
        for _ in range(1000):
            opcode, _, _ = reader.frame()
            if opcode == OP_CLOSE:
                break
        while sock.recv(4096):
            pass
    except (BenchError, OSError):
        pass
    finally:
        sock.close()


# -- server CPU ---------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# -- scenarios ------------------------------------------------------------------


def _windows(
    run_window: Callable[[float], tuple[int, float]],
    duration: float,
    parts: int,
    pid: int,
) -> dict[str, Any]:
    """Runs `parts` timed windows; returns the median rate and server CPU/message."""
    rates: list[float] = []
    total = 0
    cpu0 = cpu_seconds(pid)
    own0 = time.process_time()
    for _ in range(parts):
        count, elapsed = run_window(duration / parts)
        rates.append(count / elapsed)
        total += count
    cpu = cpu_seconds(pid) - cpu0
    own = time.process_time() - own0
    return {
        "value": median(rates),
        "samples": rates,
        "messages": total,
        "server_cpu_us_per_msg": (cpu / total * 1e6) if (pid and total) else None,
        "client_cpu_us_per_msg": own / total * 1e6 if total else None,
    }


def ping_pong(port: int, size: int, duration: float, parts: int, pid: int) -> dict[str, Any]:
    payload = os.urandom(size)
    frame = client_frame(payload)
    sock, reader = open_ws(port)
    sendall = sock.sendall
    message = reader.message
    # correctness check, then warm-up
    sendall(frame)
    n = message()
    if n != size or bytes(reader.buf[reader.start - n : reader.start]) != payload:
        raise BenchError("the echo did not match")
    warm = time.perf_counter() + min(0.2, duration / 5)
    for _ in range(100_000):
        sendall(frame)
        message()
        if time.perf_counter() >= warm:
            break

    def window(length: float) -> tuple[int, float]:
        clock = time.perf_counter
        start = clock()
        deadline = start + length
        count = 0
        while count < 10_000_000:
            sendall(frame)
            if message() != size:
                raise BenchError("short echo")
            count += 1
            if clock() >= deadline:
                break
        return count, clock() - start

    result = _windows(window, duration, parts, pid)
    close_ws(sock, reader)
    return result


def pipelined(port: int, count: int, duration: float, parts: int, pid: int) -> dict[str, Any]:
    """Send `count` 16 B messages without waiting (a writer thread), count the echoes."""
    batch = client_frame(b"0123456789abcdef") * count
    sock, reader = open_ws(port)

    def one_batch() -> float:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                sock.sendall(batch)
            except BaseException as exc:  # reported below
                errors.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        start = time.perf_counter()
        writer.start()
        got = 0
        message = reader.message
        while got < count:
            message()
            got += 1
        elapsed = time.perf_counter() - start
        writer.join(10)
        if errors:
            raise BenchError(f"writer failed: {errors[0]!r}")
        return elapsed

    one_batch()  # warm-up
    rates: list[float] = []
    cpu0 = cpu_seconds(pid)
    own0 = time.process_time()
    deadline = time.perf_counter() + duration
    for _ in range(max(parts, 1) * 4):
        rates.append(count / one_batch())
        if len(rates) >= parts and time.perf_counter() >= deadline:
            break
    cpu = cpu_seconds(pid) - cpu0
    own = time.process_time() - own0
    total = count * len(rates)
    close_ws(sock, reader)
    return {
        "value": median(rates),
        "samples": rates,
        "messages": total,
        "server_cpu_us_per_msg": (cpu / total * 1e6) if pid else None,
        "client_cpu_us_per_msg": own / total * 1e6,
    }


def handshakes(port: int, duration: float, parts: int, pid: int) -> dict[str, Any]:
    """Open (TCP + upgrade) and close (close handshake + server's TCP close), one at a time."""
    request = request_bytes(port)

    def one() -> None:
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        reader = Reader(sock, 4096)
        reader.handshake()
        close_ws(sock, reader)

    for _ in range(20):
        one()

    def window(length: float) -> tuple[int, float]:
        start = time.perf_counter()
        deadline = start + length
        count = 0
        while count < 1_000_000:
            one()
            count += 1
            if time.perf_counter() >= deadline:
                break
        return count, time.perf_counter() - start

    return _windows(window, duration, parts, pid)


def idle(port: int, n: int, hold: float, batch: int) -> None:
    """Open `n` connections and keep them open for `hold` seconds.
    Prints `READY <opened> <seconds>` once all are open; exits after `hold`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = request_bytes(port)
    held: list[socket.socket] = []
    start = time.perf_counter()
    while len(held) < n:
        group = []
        for _ in range(min(batch, n - len(held))):
            sock = socket.create_connection((HOST, port), timeout=30)
            sock.sendall(request)
            group.append(sock)
        for sock in group:
            Reader(sock, 1024).handshake()
            held.append(sock)
        if time.perf_counter() - start > 300:
            raise BenchError(f"opened only {len(held)} connections in 300 s")
    print(f"READY {len(held)} {time.perf_counter() - start:.3f}", flush=True)
    time.sleep(hold)
    for sock in held:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client")
    parser.add_argument("scenario", choices=["ping-pong", "pipelined", "handshakes", "idle"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    if args.scenario == "idle":
        idle(args.port, args.count, args.hold, args.batch)
        return 0
    if args.scenario == "ping-pong":
        result = ping_pong(args.port, args.size, args.duration, args.parts, args.server_pid)
    elif args.scenario == "pipelined":
        result = pipelined(args.port, args.count, args.duration, args.parts, args.server_pid)
    else:
        result = handshakes(args.port, args.duration, args.parts, args.server_pid)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
