"""A real `redis-server` started and stopped by its user (Debian's package, `make redis`).

One process on 127.0.0.1 and a free port (or on a unix socket only), no persistence
(`--save '' --appendonly no`), its files in a directory of the caller's. The engine
tests (tests/engine/conftest.py) and the cluster benchmarks use this one class:

    with RedisServer.temporary() as redis:       # a fresh directory, removed after
        ... redis.url ...                        # "redis://127.0.0.1:PORT/0"

`restart()` keeps the address, so clients reconnect to the same place (outage tests).
`prefix` runs the server under another command, e.g. `["taskset", "-c", "0"]` to pin
it to a CPU for a benchmark; `scale` multiplies every wait (a slow or shared machine).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process; `url` stays the same across `restart()`.
    `unix_socket=True`: it listens on a unix socket in `directory` only (no TCP)."""

    def __init__(
        self,
        directory: Path,
        *,
        unix_socket: bool = False,
        prefix: Sequence[str] = (),
        scale: float = 1.0,
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed: run `make redis`")
        self.directory = directory
        self.socket_path = str(directory / "redis.sock") if unix_socket else None
        self.port = 0 if unix_socket else free_port()
        self.prefix = list(prefix)
        self.scale = scale
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @classmethod
    @contextmanager
    def temporary(
        cls, *, unix_socket: bool = False, prefix: Sequence[str] = (), scale: float = 1.0
    ) -> Iterator[RedisServer]:
        """A server in a fresh temporary directory, stopped and removed at the end."""
        directory = Path(tempfile.mkdtemp(prefix="socker-redis-"))
        try:
            server = cls(directory, unix_socket=unix_socket, prefix=prefix, scale=scale)
            try:
                yield server
            finally:
                server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def _connect(self, timeout: float) -> socket.socket:
        if self.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def _ping(self) -> bool:
        try:
            with self._connect(0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        assert self.proc is None, "already running"
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *(
                    ("--unixsocket", self.socket_path, "--unixsocketperm", "700")
                    if self.socket_path is not None
                    else ()
                ),
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        end = time.monotonic() + 10 * self.scale
        while not self._ping():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"redis-server exited at start: {err}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port stays reserved by name."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5 * self.scale)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5 * self.scale)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port: an outage; no data survives it."""
        self.stop()
        self.start()

    def command(self, *args: str) -> Any:
        """One command through redis-cli's inline protocol (for assertions)."""
        with self._connect(2 * self.scale) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.recv(65536)

    def flush(self) -> None:
        assert self.command("FLUSHALL").startswith(b"+OK")
