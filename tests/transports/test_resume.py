"""Resume on every driver and backend, over real loopback sockets through a
proxy that cuts the TCP connection (RST, or a silent drop with no FIN) at every
step and in the middle of bursts. Both transcripts must show every message
exactly once, in order; on_close runs once; nothing is left running."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import pytest

from socker_core import Connection, Flow
from tests.resume_flows import control_size, expected, make_pair, session_size
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.cutproxy import CutProxy
from tests.transports.harness import DriverHarness

KEEPALIVE = {"ping_interval": 0.2, "ping_timeout": 0.3}

# Bytes server -> client after the 101 head at which the cut happens. The
# "session" message (SESSION bytes: 83 with its heartbeat) comes first, then each
# step's burst is three 6-byte frames (s0: SESSION+1 to +18, s1: +19 to +36, s2:
# +37 to +54, s3: +55 to +72), then the close: cuts right after the session
# message, inside frames, between bursts, at every step, and just before the close.
SESSION = session_size(deadline(10.0), KEEPALIVE["ping_interval"])
AFTER_SESSION = [0, 3, 12, 19, 28, 37, 46, 58, 67, 72]
# The "resumed" message, with the server's received count under 10.
RESUMED = control_size("resumed", received=0, heartbeat=KEEPALIVE["ping_interval"])


@pytest.fixture
def proxy_for() -> Any:
    proxies: list[CutProxy] = []

    def make(port: int) -> CutProxy:
        proxy = CutProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def _wait_idle(server: Any) -> None:
    end = time.monotonic() + deadline(5.0)
    while server.active_connections() and time.monotonic() < end:
        time.sleep(0.01)
    assert server.active_connections() == 0


@pytest.fixture(autouse=True, scope="module")
def _uvloop_warm() -> None:
    """uvloop keeps one pipe pair open after its first loop (for good): make it
    exist before the tests count file descriptors."""
    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal("asyncio", {"use_uvloop": True}):
        pass


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run(
    driver: DriverHarness,
    start_server: StartServer,
    proxy_for: Any,
    budgets: list[int],
    mode: str,
) -> tuple[Any, Any, Any, CutProxy]:
    server_flow, client_flow, srec, crec = make_pair(window=deadline(10.0))
    gc.collect()  # sockets earlier tests dropped are closed before the baseline
    threads, fds = threading.active_count(), _open_fds()
    server = start_server(server_flow, **KEEPALIVE)
    proxy = proxy_for(server.port)
    proxy.plan(list(budgets), mode)
    result = driver.run_client(
        proxy.url, client_flow, timeout=deadline(20.0), reconnect=True, **KEEPALIVE
    )
    _wait_idle(server)
    # Nothing left over: every thread and socket the server, the client and the
    # proxy made is gone once they stop.
    server.stop()
    proxy.stop()
    end = time.monotonic() + deadline(5.0)
    while (threading.active_count() > threads or _open_fds() > fds) and time.monotonic() < end:
        time.sleep(0.01)
        gc.collect()
    assert threading.active_count() <= threads
    assert _open_fds() <= fds
    return result, srec, crec, proxy


@pytest.mark.parametrize("after", AFTER_SESSION)
@pytest.mark.parametrize("mode", ["rst", "silent"])
def test_a_cut_anywhere_resumes(
    driver: DriverHarness, start_server: StartServer, proxy_for: Any, after: int, mode: str
) -> None:
    result, srec, crec, proxy = _run(driver, start_server, proxy_for, [SESSION + after], mode)
    assert proxy.cuts == 1
    assert result.code == 1000, result
    assert srec.seen == expected("server")
    assert crec.seen == expected("client")
    assert (srec.opened, crec.opened) == (1, 1)
    assert srec.closed == [1000] and crec.closed == [1000]
    # A side cut after its last step was closing: it resends its close on resume
    # and is not handed back to the application (no on_detach/on_resume then).
    assert srec.resumed == srec.detached == (0 if after > 55 else 1)
    assert crec.resumed == crec.detached == (0 if after >= 72 else 1)
    assert proxy.connections == 2


@pytest.mark.parametrize("mode", ["rst", "silent"])
def test_five_consecutive_drops(
    driver: DriverHarness, start_server: StartServer, proxy_for: Any, mode: str
) -> None:
    # Each resumed transport is cut again inside the message after its
    # "resumed": the replay, or the next live message.
    budgets = [SESSION + 3] + [RESUMED + 3] * 4
    result, srec, crec, proxy = _run(driver, start_server, proxy_for, budgets, mode)
    assert proxy.cuts == 5
    assert result.code == 1000, result
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.closed == [1000] and crec.closed == [1000]
    assert crec.resumed == 5 and srec.resumed == srec.detached
    assert (srec.opened, crec.opened) == (1, 1)


def test_an_awaited_handler_pending_at_the_drop_finishes_on_the_new_transport(
    driver: DriverHarness, start_server: StartServer, proxy_for: Any
) -> None:
    import anyio

    proxies: list[CutProxy] = []
    server_flow = Flow("slow", resume_window=deadline(10.0))
    server_closes: list[int | None] = []
    server_flow.on_close(lambda conn: server_closes.append(conn.close_code))

    @server_flow.step
    async def slow(conn: Connection, message: bytes) -> bool:
        proxies[0].cut("rst")  # the transport dies while this handler runs
        await anyio.sleep(0.3)
        conn.send(b"done:" + message)
        return True

    @server_flow.step
    def bye(conn: Connection, message: bytes) -> bool:
        return message == b"bye"

    server = start_server(server_flow)
    proxies.append(proxy_for(server.port))
    client_flow = Flow("c")
    seen: list[bytes] = []
    client_flow.on_open(lambda conn: conn.send(b"go"))

    client_flow.on_resume(lambda conn: seen.append(b"<resumed>"))

    @client_flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        seen.append(message)
        conn.send(b"bye")
        return True

    result = driver.run_client(proxies[0].url, client_flow, timeout=deadline(10.0), reconnect=True)
    assert result.code == 1000, result
    assert seen == [b"<resumed>", b"done:go"]  # resumed first: the handler was pending
    _wait_idle(server)
    assert server_closes == [1000]
    assert proxies[0].connections == 2


def test_shutdown_ends_detached_sessions_once_with_1001(
    driver: DriverHarness, start_server: StartServer, proxy_for: Any
) -> None:
    server_flow = Flow("hold", resume_window=1.0)
    closes: list[int | None] = []
    detached = threading.Event()
    server_flow.on_close(lambda conn: closes.append(conn.close_code))
    server_flow.on_detach(lambda conn: detached.set())
    server_flow.add(lambda conn, message: False, name="hold")
    server = start_server(server_flow)
    proxy = proxy_for(server.port)
    client_flow = Flow("c")
    client_flow.on_open(lambda conn: conn.send(b"hi"))

    def cut_for_good(conn: Connection, message: bytes) -> bool:
        return False

    client_flow.add(cut_for_good, name="wait")

    @server_flow.on_open
    def cut_soon(conn: Connection) -> None:
        threading.Timer(0.1, lambda: (proxy._listener.close(), proxy.cut("rst"))).start()

    outcome: dict[str, Any] = {}

    def client() -> None:
        outcome["result"] = driver.run_client(
            proxy.url, client_flow, timeout=deadline(10.0), reconnect=True
        )

    thread = threading.Thread(target=client)
    thread.start()
    assert detached.wait(deadline(5.0))
    started = time.monotonic()
    server.stop()  # the detached session ends now, not at its window's end
    assert time.monotonic() - started < deadline(5.0)
    assert closes == [1001]
    thread.join(deadline(10.0))
    assert not thread.is_alive()
    assert outcome["result"].code == 1006  # the client's window ended, unreachable
