"""Fixtures for the transport tests: the driver matrix and helpers.

`DRIVERS` maps a driver name to a factory of its `DriverHarness` (harness.py).
Another driver joins the conformance suite by adding one entry here.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import trustme

from socker_core import Flow
from tests.transports.harness import DriverHarness, RunningServer
from tests.transports.harness_anyio import AnyioHarness
from tests.transports.harness_threaded import ThreadedHarness

DRIVERS: dict[str, Callable[[], DriverHarness]] = {
    "anyio-asyncio": lambda: AnyioHarness("anyio-asyncio", "asyncio", {}),
    "anyio-uvloop": lambda: AnyioHarness("anyio-uvloop", "asyncio", {"use_uvloop": True}),
    "anyio-trio": lambda: AnyioHarness("anyio-trio", "trio", {}),
    "threaded": ThreadedHarness,
}


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest) -> DriverHarness:
    return DRIVERS[request.param]()


class _Tracked:
    """A RunningServer whose stop() is idempotent, stopped at teardown if the test
    did not stop it."""

    def __init__(self, inner: RunningServer) -> None:
        self.inner = inner
        self.port = inner.port
        self.stopped = False

    @property
    def url(self) -> str:
        return self.inner.url

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.inner.stop()

    def active_connections(self) -> int:
        return 0 if self.stopped else self.inner.active_connections()


StartServer = Callable[..., _Tracked]


@pytest.fixture
def start_server(driver: DriverHarness) -> Iterator[StartServer]:
    """`start_server(routes, **options)` on the driver under test; stopped at teardown."""
    started: list[_Tracked] = []

    def start(routes: Flow | Mapping[str, Flow], **options: Any) -> _Tracked:
        server = _Tracked(driver.start_server(routes, **options))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_contexts(tls_ca: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a 127.0.0.1 certificate, client context trusting it)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail if the test leaves threads behind."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leftover:
        thread.join(timeout=2.0)
    leftover = [t for t in leftover if t.is_alive()]
    assert not leftover, f"threads left behind: {leftover}"
