"""The threaded driver: threads and sockets, interop, load, async handlers, shutdown.

Everything runs on 127.0.0.1 with real sockets; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

import pytest
import websockets.exceptions
import websockets.sync.client
import websockets.sync.server

from socker_core import Close, Connection, ConnectionClosedError, Flow
from socker_transports import threaded
from socker_transports.wire import Accept, HandshakeRequest, Reject
from tests.timing import deadline

pytestmark = pytest.mark.timeout(60)

# -- flows ----------------------------------------------------------------------------

HELLO, WELCOME, READY, OFFER, ANSWER, CONNECTED, BYE = (
    b"hello",
    b"welcome",
    b"ready",
    b"offer",
    b"answer",
    b"connected",
    b"bye",
)


def four_step_server(*, async_steps: bool = False) -> Flow:
    """hello -> welcome, ready -> offer, answer -> connected, bye completes (1000)."""
    flow = Flow("four-server")
    replies = {HELLO: WELCOME, READY: OFFER, ANSWER: CONNECTED}

    def make(expected: bytes, name: str) -> None:
        if async_steps:

            async def step(conn: Connection, message: bytes) -> bool:
                await asyncio.sleep(0)
                if message != expected:
                    return False
                if expected in replies:
                    conn.send(replies[expected])
                return True

        else:

            def step(conn: Connection, message: bytes) -> bool:  # type: ignore[misc]
                if message != expected:
                    return False
                if expected in replies:
                    conn.send(replies[expected])
                return True

        flow.add(step, name=name)

    for expected, name in ((HELLO, "hello"), (READY, "ready"), (ANSWER, "answer"), (BYE, "bye")):
        make(expected, name)
    return flow


def four_step_client(log: list[bytes] | None = None) -> Flow:
    """Speaks first (hello); welcome -> ready, offer -> answer, connected -> bye, then
    waits for the server's close."""
    flow = Flow("four-client")
    answers = {WELCOME: READY, OFFER: ANSWER, CONNECTED: BYE}

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(HELLO)

    def make(expected: bytes, name: str) -> None:
        def step(conn: Connection, message: bytes) -> bool:
            if log is not None:
                log.append(message)
            if message != expected:
                return False
            conn.send(answers[expected])
            return True

        flow.add(step, name=name)

    for expected, name in ((WELCOME, "welcome"), (OFFER, "offer"), (CONNECTED, "connected")):
        make(expected, name)

    @flow.step
    def done(conn: Connection, message: bytes) -> bool:
        return False  # the server completes its flow and closes

    return flow


def echo_flow() -> Flow:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        if message == BYE:
            return True
        conn.send(message)
        return False

    return flow


def bye_client() -> Flow:
    """Says bye (which completes `echo_flow`) and waits for the close."""
    flow = Flow("bye")

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(BYE)

    @flow.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    return flow


# -- helpers --------------------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """A bounded wait for a condition other threads make true."""
    end = monotonic() + deadline(seconds)
    pause = threading.Event()
    while not condition():
        if monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        pause.wait(0.005)


@contextmanager
def no_leaks() -> Iterator[None]:
    """Threads and file descriptors are back to where they were (bounded settle)."""
    threads = set(threading.enumerate())
    fds = _fd_count()
    yield

    def settled() -> bool:
        extra = [t for t in threading.enumerate() if t not in threads]
        return not extra and _fd_count() <= fds

    end = monotonic() + deadline(5)
    pause = threading.Event()
    while not settled():
        if monotonic() > end:
            extra = [t.name for t in threading.enumerate() if t not in threads]
            pytest.fail(f"left behind: threads {extra}, fds {fds} -> {_fd_count()}")
        pause.wait(0.005)


def _warm_up() -> None:
    """Allocate whatever the interpreter opens lazily on first use (so the leak counts
    compare steady states)."""
    with threaded.serve(four_step_server(async_steps=True)) as server:
        assert threaded.run_client(server.url, four_step_client()).ok


def _raw_handshake(port: int, path: str = "/") -> socket.socket:
    """A websocket client nobody wrote: a raw socket that completes the opening
    handshake and then does whatever the test wants (for example nothing)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline(5))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


# -- the basics -----------------------------------------------------------------------


def test_four_step_flow_both_sides_threaded() -> None:
    log: list[bytes] = []
    with threaded.serve(four_step_server()) as server:
        assert server.url == f"ws://127.0.0.1:{server.port}"
        result = threaded.run_client(server.url, four_step_client(log))
    assert result.ok, result
    assert result.reason == "flow complete"
    assert log == [WELCOME, OFFER, CONNECTED]


def test_no_thread_or_socket_left_behind() -> None:
    _warm_up()
    with no_leaks():
        server = threaded.serve(four_step_server(async_steps=True), ping_interval=0.05)
        clients = [threaded.connect(server.url, echo_flow()) for _ in range(3)]
        assert server.active_connections() == 3
        for client in clients:
            client.send(b"x")
        result = threaded.run_client(server.url, four_step_client())
        assert result.ok
        clients[0].close()
        assert clients[0].wait_closed(deadline(5)).code == 1000
        clients[1].abort()
        assert clients[1].wait_closed(deadline(5)).code == 1006
        server.shutdown()  # clients[2] is still open: it sees 1001
        assert clients[2].wait_closed(deadline(5)).code == 1001
        for client in clients:
            with client:
                pass
        assert server.active_connections() == 0
    assert not threaded._links_by_conn


def test_client_close_leaves_nothing_behind() -> None:
    _warm_up()
    with threaded.serve(echo_flow()) as server:
        with no_leaks():
            with threaded.connect(server.url, echo_flow()) as client:
                client.send(b"ping")
            assert client.closed
            assert client.wait_closed(0).code == 1000
        _wait_for(lambda: server.active_connections() == 0, 5, "the server side to end")


def test_connect_refused_raises_oserror() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with no_leaks(), pytest.raises(OSError):
        threaded.run_client(f"ws://127.0.0.1:{port}/", echo_flow())


def test_rejected_handshake_raises_from_connect_and_is_a_result_of_run_client() -> None:
    with threaded.serve({"/a": echo_flow()}) as server:
        with pytest.raises(threaded.HandshakeError) as info:
            threaded.connect(server.url + "/b", echo_flow())
        assert info.value.status == 404
        result = threaded.run_client(server.url + "/b", echo_flow())
        assert result.handshake_status == 404 and not result.ok
        assert threaded.run_client(server.url + "/a", bye_client()).ok


def test_bad_arguments_fail_fast() -> None:
    with pytest.raises(TypeError):
        threaded.serve(echo_flow(), max_sise=10)
    with pytest.raises(ValueError):
        threaded.connect("http://127.0.0.1:1/", echo_flow())
    with pytest.raises(ValueError):
        threaded.connect("ws://127.0.0.1:1/", echo_flow(), ssl=ssl.create_default_context())
    with pytest.raises(Exception, match="no steps"):
        threaded.serve(Flow("empty"))


# -- interop with the websockets library -------------------------------------------


def test_websockets_sync_client_against_threaded_server() -> None:
    with (
        threaded.serve(four_step_server()) as server,
        websockets.sync.client.connect(
            server.url, proxy=None, compression=None, open_timeout=deadline(5)
        ) as ws,
    ):
        ws.send(HELLO)
        assert ws.recv(timeout=deadline(5)) == WELCOME
        ws.send(READY)
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(ANSWER)
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(BYE)
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            ws.recv(timeout=deadline(5))
        assert ws.close_code == 1000
        assert ws.close_reason == "flow complete"


def test_threaded_client_against_websockets_sync_server() -> None:
    seen: list[bytes] = []

    def handler(ws: websockets.sync.server.ServerConnection) -> None:
        for expected, reply in ((HELLO, WELCOME), (READY, OFFER), (ANSWER, CONNECTED)):
            message = ws.recv(timeout=deadline(5))
            seen.append(message)  # type: ignore[arg-type]
            assert message == expected
            ws.send(reply)
        seen.append(ws.recv(timeout=deadline(5)))  # type: ignore[arg-type]
        ws.close(1000, "done")

    log: list[bytes] = []
    with websockets.sync.server.serve(handler, "127.0.0.1", 0, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            result = threaded.run_client(f"ws://127.0.0.1:{port}/", four_step_client(log))
        finally:
            server.shutdown()
            thread.join(deadline(10))
    assert not thread.is_alive()
    assert result.ok and result.reason == "done", result
    assert seen == [HELLO, READY, ANSWER, BYE]
    assert log == [WELCOME, OFFER, CONNECTED]


# -- load -------------------------------------------------------------------------


def test_two_hundred_clients_at_once() -> None:
    count = 200
    with threaded.serve(four_step_server(), backlog=count * 2) as server:
        barrier = threading.Barrier(count, timeout=deadline(30))
        results: list[Any] = [None] * count

        def one(index: int) -> None:
            barrier.wait()
            try:
                results[index] = threaded.run_client(
                    server.url, four_step_client(), open_timeout=deadline(30)
                )
            except BaseException as exc:
                results[index] = exc

        started = monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, started + deadline(60) - monotonic()))
        assert not any(thread.is_alive() for thread in threads), "clients did not finish"
        failures = [r for r in results if not (hasattr(r, "ok") and r.ok)]
        assert not failures, failures[:5]
        _wait_for(lambda: server.active_connections() == 0, 10, "every server thread")


# -- async handlers -----------------------------------------------------------------


def test_async_steps_hooks_and_handshake_hook() -> None:
    closed: list[tuple[str, int | None]] = []
    flow = four_step_server(async_steps=True)

    @flow.on_open
    async def greet(conn: Connection) -> None:
        await asyncio.sleep(0)
        conn.state.greeted = True

    @flow.on_close
    async def goodbye(conn: Connection) -> None:
        await asyncio.sleep(0)
        closed.append((conn.state.user, conn.close_code))

    async def hook(request: HandshakeRequest) -> Accept | Reject:
        await asyncio.sleep(0)
        user = request.header("x-user")
        if user is None:
            return Reject(401, b"who are you?")
        return Accept(state={"user": user})

    with threaded.serve(flow, handshake_hook=hook) as server:
        result = threaded.run_client(server.url, four_step_client(), headers=[("X-User", "ann")])
        assert result.ok, result
        refused = threaded.run_client(server.url, four_step_client())
        assert refused.handshake_status == 401
    # shutdown lets pending on_close coroutines finish
    assert closed == [("ann", 1000)]


def test_async_client_steps() -> None:
    flow = Flow("async-client")

    @flow.on_open
    async def start(conn: Connection) -> None:
        await asyncio.sleep(0)
        conn.send(b"one")

    @flow.step
    async def first(conn: Connection, message: bytes) -> bool:
        await asyncio.sleep(0.001)
        conn.send(b"two")
        return True

    @flow.step
    async def second(conn: Connection, message: bytes) -> Close:
        return Close(4000, f"got {len(message)}")

    with threaded.serve(echo_flow()) as server, no_leaks():
        result = threaded.run_client(server.url, flow)
    assert (result.code, result.reason) == (4000, "got 3")


def test_async_handler_raising_closes_with_1011() -> None:
    flow = Flow("boom")

    @flow.step
    async def boom(conn: Connection, message: bytes) -> bool:
        await asyncio.sleep(0)
        raise RuntimeError("secret detail")

    with threaded.serve(flow) as server, threaded.connect(server.url, echo_flow()) as client:
        client.send(b"x")
        result = client.wait_closed(deadline(5))
    assert result.code == 1011
    assert "secret" not in result.reason


def test_closing_cancels_a_pending_async_handler() -> None:
    started = threading.Event()
    cancelled = threading.Event()
    flow = Flow("slow")

    @flow.step
    async def slow(conn: Connection, message: bytes) -> bool:
        started.set()
        try:
            await asyncio.Event().wait()  # forever
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    with threaded.serve(flow) as server:
        with threaded.connect(server.url, echo_flow()) as client:
            client.send(b"go")
            assert started.wait(deadline(5))
            client.close(1000, "bored")
            assert client.wait_closed(deadline(5)).code == 1000
        assert cancelled.wait(deadline(5))


def test_messages_wait_in_order_behind_a_slow_async_handler() -> None:
    """max_queue is tiny: the server stops reading while the queue is full, and still
    handles every message in order."""
    got: list[bytes] = []
    flow = Flow("slow-sink")

    @flow.step
    async def sink(conn: Connection, message: bytes) -> bool:
        await asyncio.sleep(0.0005)
        got.append(message)
        if message == b"99":
            conn.send(b"all")
        return False

    client_flow = Flow("flood")

    @client_flow.on_open
    def flood(conn: Connection) -> None:
        for i in range(100):
            conn.send(str(i).encode())

    @client_flow.step
    def finish(conn: Connection, message: bytes) -> Close:
        return Close(1000, message.decode())

    with threaded.serve(flow, max_queue=2) as server:
        result = threaded.run_client(server.url, client_flow)
    assert result.reason == "all"
    assert got == [str(i).encode() for i in range(100)]


# -- application sends from other threads ----------------------------------------------


def test_client_send_from_another_thread() -> None:
    received: list[bytes] = []
    flow = Flow("collect")
    all_back = threading.Event()

    @flow.step
    def collect(conn: Connection, message: bytes) -> bool:
        received.append(message)
        if len(received) == 200:
            all_back.set()
        return False

    with threaded.serve(echo_flow()) as server, threaded.connect(server.url, flow) as client:

        def sender(prefix: bytes) -> None:
            for i in range(100):
                client.send(prefix + str(i).encode())

        senders = [threading.Thread(target=sender, args=(p,)) for p in (b"a", b"b")]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(deadline(10))
        assert all_back.wait(deadline(10))
        client.send(BYE)
        assert client.wait_closed(deadline(5)).code == 1000
    for prefix in (b"a", b"b"):
        mine = [m for m in received if m.startswith(prefix)]
        assert mine == [prefix + str(i).encode() for i in range(100)]  # per-sender order
    with pytest.raises(ConnectionClosedError):
        client.send(b"late")


def test_server_conn_send_from_another_thread() -> None:
    """Application code pushes to a server connection from its own thread."""
    conns: list[Connection] = []
    opened = threading.Event()
    flow = Flow("push")

    @flow.on_open
    def remember(conn: Connection) -> None:
        conns.append(conn)
        opened.set()

    @flow.step
    def idle(conn: Connection, message: bytes) -> bool:
        return message == BYE

    received: list[bytes] = []
    client_flow = Flow("listen")

    @client_flow.step
    def listen(conn: Connection, message: bytes) -> bool:
        received.append(message)
        if len(received) == 50:
            conn.send(BYE)
        return False

    with threaded.serve(flow) as server, threaded.connect(server.url, client_flow) as client:
        assert opened.wait(deadline(5))
        assert server.connections == frozenset(conns)

        def push() -> None:
            for i in range(50):
                threaded.send_threadsafe(conns[0], b"push %d" % i)

        pusher = threading.Thread(target=push)
        pusher.start()
        pusher.join(deadline(10))
        result = client.wait_closed(deadline(10))
    assert result.ok
    assert received == [b"push %d" % i for i in range(50)]
    with pytest.raises(ConnectionClosedError):
        threaded.send_threadsafe(conns[0], b"late")


def test_plain_conn_send_from_another_thread_races_no_handler() -> None:
    """`conn.send` (not send_threadsafe) from a foreign thread while the connection's
    own thread is busy handling messages: the Stepper's guard (the connection's lock)
    keeps every push and every echo, each stream in order."""
    conns: list[Connection] = []
    opened = threading.Event()
    flow = Flow("echo-and-push")

    @flow.on_open
    def remember(conn: Connection) -> None:
        conns.append(conn)
        opened.set()

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(b"echo " + message)
        return False

    received: list[bytes] = []
    done = threading.Event()
    client_flow = Flow("count")

    @client_flow.step
    def count(conn: Connection, message: bytes) -> bool:
        received.append(message)
        if len(received) == 600:
            done.set()
        return False

    with threaded.serve(flow) as server, threaded.connect(server.url, client_flow) as client:
        assert opened.wait(deadline(5))

        def push() -> None:
            for i in range(300):
                conns[0].send(b"push %d" % i)

        pusher = threading.Thread(target=push)
        pusher.start()
        for i in range(300):
            client.send(b"%d" % i)
        pusher.join(deadline(10))
        assert not pusher.is_alive()
        assert done.wait(deadline(10)), f"only {len(received)} of 600 messages arrived"
    assert [m for m in received if m.startswith(b"push")] == [b"push %d" % i for i in range(300)]
    assert [m for m in received if m.startswith(b"echo")] == [b"echo %d" % i for i in range(300)]


def test_foreign_conn_send_waits_for_a_running_handler() -> None:
    """The Stepper's guard is the connection's lock: a `conn.send` from another thread
    while a handler runs waits for it to finish, so it can never slip into (or be lost
    from) the handler's own call."""
    conns: list[Connection] = []
    in_handler = threading.Event()
    release = threading.Event()
    flow = Flow("hold")

    @flow.on_open
    def remember(conn: Connection) -> None:
        conns.append(conn)

    @flow.step
    def hold(conn: Connection, message: bytes) -> bool:
        in_handler.set()
        assert release.wait(deadline(10))
        conn.send(b"from the handler")
        return False

    received: list[bytes] = []
    both = threading.Event()
    client_flow = Flow("two")

    @client_flow.step
    def two(conn: Connection, message: bytes) -> bool:
        received.append(message)
        if len(received) == 2:
            both.set()
        return False

    with threaded.serve(flow) as server, threaded.connect(server.url, client_flow) as client:
        client.send(b"go")
        assert in_handler.wait(deadline(5))
        pusher = threading.Thread(target=lambda: conns[0].send(b"from outside"))
        pusher.start()
        pusher.join(0.2)  # a bounded look: the push must still be waiting for the lock
        still_waiting = pusher.is_alive()
        release.set()
        pusher.join(deadline(5))
        assert not pusher.is_alive()
        assert both.wait(deadline(5))
    assert still_waiting
    assert received == [b"from the handler", b"from outside"]


def test_an_idle_server_connection_keeps_no_queues_or_events() -> None:
    """Memory per idle connection: a server link makes its mailbox, its awaited-handler
    table and its Events only when something needs them (driver internals)."""
    with threaded.serve(echo_flow()) as server:
        sock = _raw_handshake(server.port)
        try:
            _wait_for(lambda: len(server.connections) == 1, 5, "the connection")
            (link,) = server._snapshot()
            assert link._opened is None and link._done is None
            assert link._pending is None
            _wait_for(lambda: link.waker._mail is None, 5, "the mailbox taken")
            assert not hasattr(link, "thread")  # the link is its own thread
            (conn,) = server.connections
            threaded.send_threadsafe(conn, b"ping")  # posted, taken, gone again
            assert sock.recv(64) == b"\x82\x04ping"
            _wait_for(lambda: link.waker._mail is None, 5, "the mailbox taken")
        finally:
            sock.close()


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_with_live_connections_sends_1001() -> None:
    server = threaded.serve(echo_flow())
    clients = [threaded.connect(server.url, echo_flow()) for _ in range(3)]
    with websockets.sync.client.connect(server.url, proxy=None, compression=None) as ws:
        _wait_for(lambda: server.active_connections() == 4, 5, "four connections")
        started = monotonic()
        server.shutdown()
        assert monotonic() - started < deadline(5)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            ws.recv(timeout=deadline(5))
        assert ws.close_code == 1001
    for client in clients:
        with client:
            result = client.wait_closed(deadline(5))
        assert (result.code, result.reason) == (1001, "server shutting down")
    assert server.active_connections() == 0


def test_shutdown_aborts_a_peer_that_never_answers_the_close() -> None:
    _warm_up()
    with no_leaks():
        server = threaded.serve(echo_flow(), close_timeout=0.3)
        sock = _raw_handshake(server.port)  # reads nothing, answers nothing
        try:
            _wait_for(lambda: server.active_connections() == 1, 5, "the connection")
            started = monotonic()
            server.shutdown()
            elapsed = monotonic() - started
            assert 0.25 < elapsed < deadline(3), elapsed
            frame = sock.recv(4096)
            assert frame[:1] == b"\x88" and frame[2:4] == (1001).to_bytes(2, "big")
        finally:
            sock.close()


def test_shutdown_during_the_opening_handshake_answers_503() -> None:
    server = threaded.serve(echo_flow())
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=deadline(5))
    try:
        _wait_for(lambda: server.active_connections() == 1, 5, "the connection")
        server.shutdown()
        assert sock.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        sock.close()


def test_serve_forever_returns_after_close_from_a_handler() -> None:
    flow = Flow("stopper")
    holder: list[threaded.Server] = []

    @flow.step
    def stop(conn: Connection, message: bytes) -> bool:
        holder[0].close()
        return False

    server = threaded.serve(flow)
    holder.append(server)
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    with threaded.connect(server.url, echo_flow()) as client:
        client.send(b"stop")
        assert client.wait_closed(deadline(5)).code == 1001
    runner.join(deadline(5))
    assert not runner.is_alive()


# -- TLS and keepalive ----------------------------------------------------------------


def test_tls_both_sides(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    with threaded.serve(four_step_server(async_steps=True), ssl=server_ctx) as server:
        assert server.url.startswith("wss://")
        assert threaded.run_client(server.url, four_step_client(), ssl=client_ctx).ok
        with websockets.sync.client.connect(
            server.url, ssl=client_ctx, proxy=None, compression=None
        ) as ws:
            ws.send(HELLO)
            assert ws.recv(timeout=deadline(5)) == WELCOME
        with pytest.raises(ssl.SSLError):  # the default context does not trust the CA
            threaded.connect(server.url, echo_flow())
        # a plain-text client on the TLS port fails without hurting the server
        with pytest.raises(threaded.HandshakeError):
            threaded.connect(f"ws://127.0.0.1:{server.port}/", echo_flow(), open_timeout=2)
        assert threaded.run_client(server.url, four_step_client(), ssl=client_ctx).ok


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One small unmasked frame from the server: (opcode, payload)."""
    head = _recv_exactly(sock, 2)
    length = head[1] & 0x7F
    assert length < 126
    return head[0] & 0x0F, _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def _send_pong(sock: socket.socket, payload: bytes) -> None:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)


def test_keepalive_keeps_a_live_peer_and_drops_a_silent_one() -> None:
    with threaded.serve(echo_flow(), ping_interval=0.05, ping_timeout=0.1) as server:
        live = _raw_handshake(server.port)
        try:
            for _ in range(5):  # several rounds of ping/pong keep it open
                opcode, payload = _read_frame(live)
                assert opcode == 0x9
                _send_pong(live, payload)
            assert server.active_connections() == 1
        finally:
            live.close()
        _wait_for(lambda: server.active_connections() == 0, 5, "the first connection to end")
        silent = _raw_handshake(server.port)  # never answers pings
        try:
            assert _read_frame(silent)[0] == 0x9  # a ping...
            rest = b""  # ...then dropped (after a 1011 close frame, if the wire sends one)
            while chunk := silent.recv(4096):
                rest += chunk
            assert rest == b"" or rest[2:4] == (1011).to_bytes(2, "big"), rest
        finally:
            silent.close()


def test_large_messages_over_tls(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Partial writes and reads (several MiB through 64 KiB reads and TLS records)."""
    server_ctx, client_ctx = tls_contexts
    big = os.urandom(3 * 1024 * 1024)
    flow = Flow("big")
    echoed: list[bytes] = []

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(big)
        conn.send(big[::-1])

    @flow.step
    def first(conn: Connection, message: bytes) -> bool:
        echoed.append(message)
        return True

    @flow.step
    def second(conn: Connection, message: bytes) -> Close:
        echoed.append(message)
        return Close(1000, "done")

    limit = 4 * 1024 * 1024
    with threaded.serve(echo_flow(), ssl=server_ctx, max_size=limit) as server:
        result = threaded.run_client(server.url, flow, ssl=client_ctx, max_size=limit)
    assert result.ok, result
    assert echoed == [big, big[::-1]]
