"""A real `redis-server` for the engine tests (Debian's package, `make redis`).

`redis_server` (session): one server on 127.0.0.1 and a free port, no persistence
(`--save '' --appendonly no`), its files in a temporary directory, stopped at the end.
`redis_url` (per test): that server flushed clean, as a `redis://` URL.
`own_redis` (per test): a server of the test's own, for outage tests that stop and
restart it (`restart()` keeps the port, so clients reconnect to the same address).
`unix_redis` (per test): a server on a unix socket only (`unix://...` URL).

The engine tests run on asyncio, uvloop and trio (`anyio_backend`), like test_anyio.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.timing import deadline

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process; `url` stays the same across `restart()`.
    `unix_socket=True`: it listens on a unix socket in `directory` only (no TCP)."""

    def __init__(self, directory: Path, *, unix_socket: bool = False) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed: run `make redis`")
        self.directory = directory
        self.socket_path = str(directory / "redis.sock") if unix_socket else None
        self.port = 0 if unix_socket else _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

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
        end = time.monotonic() + deadline(10)
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
            proc.wait(deadline(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(deadline(5))
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port: an outage; no data survives it."""
        self.stop()
        self.start()

    def command(self, *args: str) -> Any:
        """One command through redis-cli's inline protocol (for assertions)."""
        with self._connect(deadline(2)) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.recv(65536)

    def flush(self) -> None:
        assert self.command("FLUSHALL").startswith(b"+OK")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="socker-redis-"))
    server = RedisServer(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="socker-redis-own-"))
    server = RedisServer(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def unix_redis() -> Iterator[RedisServer]:
    """A server of the test's own on a unix socket (no TCP port at all)."""
    directory = Path(tempfile.mkdtemp(prefix="socker-redis-unix-"))
    server = RedisServer(directory, unix_socket=True)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param
