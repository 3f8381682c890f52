"""A real `redis-server` for the engine tests (Debian's package, `make redis`), through
benchmarks/redis_server.py (the benchmarks start theirs the same way).

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
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import benchmarks.redis_server
from tests.timing import TIME_FACTOR


class RedisServer(benchmarks.redis_server.RedisServer):
    """benchmarks/redis_server.py's server (one helper for the tests and the
    benchmarks), every wait scaled by the tests' time factor."""

    def __init__(self, directory: Path, *, unix_socket: bool = False) -> None:
        super().__init__(directory, unix_socket=unix_socket, scale=TIME_FACTOR)


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
