"""Resumes that cannot be honoured, on every driver: each ends with its
documented close code while another client on the same server is undisturbed;
and the takeover of a half-open session."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from socker_core import CloseCode, Connection, Flow, MemorySessionStore
from socker_transports.wire import Options
from tests.resume_flows import expected, make_pair, session_size
from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.cutproxy import CutProxy
from tests.transports.harness import DriverHarness

#: Server -> client bytes at which a cut falls inside the first burst (13 bytes
#: after the "session" message, whose heartbeat is the default ping_interval).
FIRST_BURST = session_size(deadline(10.0), Options().ping_interval) + 13


def store_of(server: Any) -> MemorySessionStore:
    inner = server.inner.server.session_store
    return inner if isinstance(inner, MemorySessionStore) else inner.store


@pytest.fixture
def bystander(driver: DriverHarness) -> Iterator[Callable[[Any], None]]:
    """Start a second, resumable client that ping-pongs with the server until the
    test is done, then finishes normally: it must see every echo once, in order."""
    release = threading.Event()
    outcome: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def start(server: Any) -> None:
        flow = Flow("bystander")
        sent: list[bytes] = []
        seen: list[bytes] = []

        def send(conn: Connection, text: bytes) -> None:
            sent.append(text)
            conn.send(text)

        flow.on_open(lambda conn: send(conn, b"0"))

        @flow.step
        def pong(conn: Connection, message: bytes) -> bool:
            seen.append(message)
            if release.is_set():
                send(conn, b"bye")
                return True
            send(conn, b"%d" % len(sent))
            return False

        def run() -> None:
            outcome["result"] = driver.run_client(
                server.url + "/echo", flow, timeout=deadline(30.0), reconnect=True
            )
            outcome["sent"], outcome["seen"] = sent, seen

        thread = threading.Thread(target=run)
        threads.append(thread)
        thread.start()
        end = time.monotonic() + deadline(5.0)
        while len(seen) < 3 and time.monotonic() < end:
            time.sleep(0.005)
        assert len(seen) >= 3, "the bystander did not start"

    yield start
    release.set()
    for thread in threads:
        thread.join(deadline(30.0))
        assert not thread.is_alive()
        assert outcome["result"].code == 1000, outcome["result"]
        assert outcome["seen"] == outcome["sent"][:-1]  # every echo once, in order


def echo_flow() -> Flow:
    flow = Flow("echo", resume_window=deadline(10.0))

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return message == b"bye"

    return flow


def plain_client() -> Flow:
    flow = Flow("intruder")
    flow.add(lambda conn, message: False, name="never")
    return flow


def test_an_unknown_token_is_4410(
    driver: DriverHarness, start_server: StartServer, bystander: Any
) -> None:
    server_flow = make_pair()[0]
    server = start_server({"/": server_flow, "/echo": echo_flow()})
    bystander(server)
    offer = "socker.resume." + "A" * 22 + ".0"
    result = driver.run_client(
        server.url + "/",
        plain_client(),
        timeout=deadline(10.0),
        subprotocols=("socker.resume.v1", offer),
    )
    assert result.code == CloseCode.SESSION_GONE, result


def test_a_spent_token_is_4403_and_a_wrong_route_too(
    driver: DriverHarness, start_server: StartServer, bystander: Any
) -> None:
    server_flow, client_flow, srec, crec = make_pair(window=deadline(10.0))
    server = start_server({"/": server_flow, "/echo": echo_flow()})
    bystander(server)
    proxy = CutProxy(server.port)
    try:
        proxy.plan([FIRST_BURST], "rst")
        result = driver.run_client(proxy.url, client_flow, timeout=deadline(10.0), reconnect=True)
    finally:
        proxy.stop()
    assert result.code == 1000 and crec.seen == expected("client") and crec.resumed == 1
    spent = [t for t, (code, *_rest) in store_of(server).tombstones.items() if code == 4403]
    assert len(spent) == 1  # the first token: used once, confirmed, never again
    for path in ("/", "/echo"):
        offer = f"socker.resume.{spent[0]}.0"
        again = driver.run_client(
            server.url + path,
            plain_client(),
            timeout=deadline(10.0),
            subprotocols=("socker.resume.v1", offer),
        )
        assert again.code == CloseCode.RESUME_REFUSED, again
    assert srec.closed == [1000]


def test_replay_overflow_while_detached_is_4413(
    driver: DriverHarness, start_server: StartServer, bystander: Any
) -> None:
    server_flow, client_flow, srec, crec = make_pair(window=deadline(10.0), max_resume_buffer=2000)

    @server_flow.on_detach
    def flood(conn: Connection) -> None:
        for _ in range(3):
            conn.send(b"x" * 1000)  # past max_resume_buffer: the session ends now

    server = start_server({"/": server_flow, "/echo": echo_flow()})
    bystander(server)
    proxy = CutProxy(server.port)
    try:
        proxy.plan([FIRST_BURST], "rst")
        result = driver.run_client(proxy.url, client_flow, timeout=deadline(10.0), reconnect=True)
    finally:
        proxy.stop()
    assert result.code == CloseCode.RESUME_BUFFER_OVERFLOW, result
    assert srec.closed == [CloseCode.RESUME_BUFFER_OVERFLOW]
    assert crec.closed == [CloseCode.RESUME_BUFFER_OVERFLOW]


def test_a_resume_takes_over_a_half_open_session_with_4409(
    driver: DriverHarness,
    start_server: StartServer,
    bystander: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socker")
    server_flow, client_flow, srec, crec = make_pair(window=deadline(10.0))
    # The server never pings: after a silent drop its transport still looks alive.
    server = start_server({"/": server_flow, "/echo": echo_flow()}, ping_interval=None)
    bystander(server)
    proxy = CutProxy(server.port)
    try:
        proxy.plan([session_size(deadline(10.0), None) + 13], "silent")  # no heartbeat
        result = driver.run_client(
            proxy.url,
            client_flow,
            timeout=deadline(20.0),
            reconnect=True,
            ping_interval=0.2,
            ping_timeout=0.3,
        )
        assert result.code == 1000, result
        assert srec.seen == expected("server") and crec.seen == expected("client")
        assert srec.closed == [1000] and crec.closed == [1000]
        assert srec.detached == srec.resumed == 1  # detached by the takeover itself
    finally:
        proxy.stop()
    assert "session taken over by a new connection" in caplog.text


def test_window_expiry_ends_both_sides_and_another_client_is_undisturbed(
    driver: DriverHarness, start_server: StartServer, bystander: Any
) -> None:
    server_flow = Flow("hold", resume_window=0.3)
    closes: list[int | None] = []
    server_flow.on_close(lambda conn: closes.append(conn.close_code))

    @server_flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return message == b"bye"

    server = start_server({"/": server_flow, "/echo": echo_flow()})
    bystander(server)
    proxy = CutProxy(server.port)
    client_flow = Flow("c")
    client_closes: list[int | None] = []
    client_flow.on_close(lambda conn: client_closes.append(conn.close_code))

    @client_flow.on_open
    def hello(conn: Connection) -> None:
        conn.send(b"hi")

    @client_flow.step
    def got(conn: Connection, message: bytes) -> bool:
        proxy._listener.close()  # every reconnect is refused from now on
        proxy.cut("rst")
        return False

    try:
        result = driver.run_client(proxy.url, client_flow, timeout=deadline(10.0), reconnect=True)
    finally:
        proxy.stop()
    assert result.code == CloseCode.ABNORMAL and result.reason == "resume window expired"
    assert client_closes == [CloseCode.ABNORMAL]
    other_flow = Flow("other")

    @other_flow.on_open
    def bye(conn: Connection) -> None:
        conn.send(b"bye")

    other_flow.add(lambda conn, message: True, name="done")
    other = driver.run_client(server.url, other_flow, timeout=deadline(10.0))
    assert other.code == 1000
    end = time.monotonic() + deadline(5.0)
    while len(closes) < 2 and time.monotonic() < end:
        time.sleep(0.01)  # the server's window may end a moment after the client's
    assert sorted(closes) == [1000, CloseCode.ABNORMAL]
