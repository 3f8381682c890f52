"""What only the anyio driver has: async handlers and hooks on the loop, sends
from other tasks, backpressure, the async context managers and their errors.

Runs on asyncio, asyncio+uvloop and trio through anyio's pytest plugin.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import pytest

from socker_core import Close, Connection, Flow, LocalProtocolError
from socker_transports.anyio import HandshakeError, connect, run_client, serve
from socker_transports.wire import Accept, HandshakeRequest, HttpResponse, Reject
from tests.timing import deadline
from tests.transports.flows import Log, make_game_client, make_game_server, make_greeter, make_sink

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def test_game_flow_in_one_loop() -> None:
    server_log, client_log = Log(), Log()
    with anyio.fail_after(deadline(5)):
        async with serve(make_game_server(server_log)) as server:
            result = await run_client(server.url, make_game_client(client_log))
    assert result.ok
    assert [e.code for e in server_log] == [1000]
    assert client_log[0].state["spawned"] is True


async def test_async_handler_keeps_order_while_pending() -> None:
    """Messages that arrive while an async step is pending wait, in order."""
    handled: list[bytes] = []
    flow = Flow("slow")

    @flow.step
    async def slow(conn: Connection, message: bytes) -> bool:
        await anyio.sleep(0.01)
        handled.append(message)
        conn.send(b"ack " + message)
        return message == b"9"

    client = Flow("burst")
    acks: list[bytes] = []

    @client.on_open
    def burst(conn: Connection) -> None:
        for i in range(10):
            conn.send(str(i).encode())

    @client.step
    def collect(conn: Connection, message: bytes) -> bool:
        acks.append(message)
        return False

    with anyio.fail_after(deadline(5)):
        async with serve(flow) as server:
            result = await run_client(server.url, client)
    assert result.ok, result
    assert handled == [str(i).encode() for i in range(10)]
    assert acks == [b"ack " + str(i).encode() for i in range(10)]


async def test_close_cancels_a_pending_handler_and_awaits_on_close() -> None:
    events: list[str] = []
    flow = Flow("stuck")

    @flow.step
    async def forever(conn: Connection, message: bytes) -> bool:
        events.append("started")
        try:
            await anyio.sleep_forever()
        finally:
            events.append("cancelled")
        return True  # pragma: no cover

    @flow.on_close
    async def cleanup(conn: Connection) -> None:
        await anyio.sleep(0.05)  # e.g. closing a peer connection
        events.append(f"on_close {conn.close_code}")

    closer = Flow("closer")

    @closer.on_open
    def go(conn: Connection) -> None:
        conn.send(b"go")

    @closer.step
    def never(conn: Connection, message: bytes) -> bool:
        return False

    with anyio.fail_after(deadline(5)):
        async with serve(flow) as server, connect(server.url, closer) as client:
            while "started" not in events:
                await anyio.sleep(0.005)
            result = await client.close(4005, "enough")
    assert (result.code, result.reason) == (4005, "enough")
    # The server's connection task ended only after its on_close hook finished.
    assert events == ["started", "cancelled", "on_close 4005"]


async def test_broadcast_from_another_task() -> None:
    flow = Flow("room")

    @flow.on_open
    def joined(conn: Connection) -> None:
        conn.send(b"joined")

    @flow.step
    def listen(conn: Connection, message: bytes) -> bool:
        return False

    received: dict[int, list[bytes]] = {0: [], 1: [], 2: []}

    def listener(index: int) -> Flow:
        client = Flow(f"listener{index}")

        @client.step
        def hear(conn: Connection, message: bytes) -> bool | Close:
            received[index].append(message)
            return Close(1000, "heard") if message == b"news 2" else False

        return client

    with anyio.fail_after(deadline(5)):
        async with serve(flow) as server, anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(run_client, server.url, listener(i))
            while len(server.connections) < 3 or any(not r for r in received.values()):
                await anyio.sleep(0.005)
            for n in range(3):
                for conn in server.connections:  # from this task, not a handler
                    conn.send(b"news %d" % n)
    assert all(r == [b"joined", b"news 0", b"news 1", b"news 2"] for r in received.values())


async def test_client_send_from_outside_the_flow() -> None:
    log = Log()
    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(log=log)) as server:
            got: list[bytes] = []
            flow = Flow("echoes")

            @flow.step
            def hear(conn: Connection, message: bytes) -> bool:
                got.append(message)
                return len(got) == 3

            async with connect(server.url, flow) as client:
                assert client.conn.step == "hear"
                client.send(b"one")
                client.send(b"two")
                result = await client.wait_closed()
    assert got == [b"welcome", b"one", b"two"]
    assert result.ok
    assert log[0].code == 1000


async def test_async_handshake_hook() -> None:
    async def hook(request: HandshakeRequest) -> Accept | Reject:
        await anyio.sleep(0.01)  # e.g. a database lookup
        if request.query != "token=ok":
            return Reject(401)
        return Accept(state={"greeting": b"hello async"})

    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(), handshake_hook=hook) as server:
            with pytest.raises(HandshakeError) as info:
                async with connect(server.url + "/?token=bad", make_sink()):
                    pass  # pragma: no cover
            assert info.value.status == 401
            got: list[bytes] = []
            flow = Flow("first")

            @flow.step
            def first(conn: Connection, message: bytes) -> bool:
                got.append(message)
                return True

            await run_client(server.url + "/?token=ok", flow)
    assert got == [b"hello async"]


async def test_handshake_hook_timeout_is_408() -> None:
    async def hook(request: HandshakeRequest) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(), handshake_hook=hook, open_timeout=0.2) as server:
            result = await run_client(server.url, make_sink())
    assert result.handshake_status == 408


async def test_backpressure_stops_reading_while_the_queue_is_full() -> None:
    release = anyio.Event()
    handled: list[bytes] = []
    flow = Flow("blocked")

    @flow.step
    async def gate(conn: Connection, message: bytes) -> bool:
        await release.wait()
        handled.append(message)
        return message == b"last"

    count = 300
    payload = b"x" * 4000
    with anyio.fail_after(deadline(10)):
        async with serve(flow, max_queue=2) as server:

            async def flood() -> None:
                flood_flow = Flow("flood")

                @flood_flow.on_open
                def send_all(conn: Connection) -> None:
                    for _ in range(count - 1):
                        conn.send(payload)
                    conn.send(b"last")

                @flood_flow.step
                def idle(conn: Connection, message: bytes) -> bool:
                    return False

                result = await run_client(server.url, flood_flow)
                assert result.ok, result

            async with anyio.create_task_group() as tg:
                tg.start_soon(flood)
                while not server._sessions or not any(
                    s.wire.stepper and s.wire.stepper.queued == 2 for s in server._sessions
                ):
                    await anyio.sleep(0.005)
                await anyio.sleep(0.1)  # give a misbehaving driver time to over-read
                (session,) = server._sessions
                # The queue is full and the wire holds at most one read's worth.
                assert not session.wire.wants_data
                assert session.wire._held_size < 300 * 1024
                transport = getattr(session, "transport", None)
                if transport is not None:  # asyncio: the protocol paused its transport
                    assert not transport.is_reading()
                release.set()
                if transport is not None:
                    while not transport.is_reading() and session in server._sessions:
                        await anyio.sleep(0.005)
    assert len(handled) == count and handled[-1] == b"last"


async def test_big_messages_echo_intact() -> None:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    blob = bytes(range(256)) * 16384  # 4 MiB
    with anyio.fail_after(deadline(10)):
        async with serve(flow, max_size=8 << 20) as server:
            got: list[bytes] = []
            client = Flow("blob")

            @client.on_open
            def send(conn: Connection) -> None:
                conn.send(blob)
                conn.send(blob[::-1])

            @client.step
            def hear(conn: Connection, message: bytes) -> bool:
                got.append(message)
                return len(got) == 2

            result = await run_client(server.url, client, max_size=8 << 20)
    assert result.ok
    assert got == [blob, blob[::-1]]


async def test_server_shutdown_from_a_handler() -> None:
    flow = Flow("admin")
    holder: dict[str, Any] = {}

    @flow.step
    def command(conn: Connection, message: bytes) -> bool:
        if message == b"shutdown":
            holder["server"].close()
        return False

    client = Flow("admin-client")

    @client.on_open
    def ask(conn: Connection) -> None:
        conn.send(b"shutdown")

    @client.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    with anyio.fail_after(deadline(5)):
        async with serve(flow, close_timeout=deadline(2)) as server:
            holder["server"] = server
            async with anyio.create_task_group() as tg:
                results = []

                async def run() -> None:
                    results.append(await run_client(server.url, client))

                tg.start_soon(run)
                await server.serve_forever()  # returns once the handler shut it down
            assert server.active == 0
    assert [(r.code, r.reason) for r in results] == [(1001, "server shutting down")]


async def test_no_task_left_behind() -> None:
    """Handler tasks, on_close hooks and connections all end with the server."""
    before = len(anyio.get_running_tasks())
    events: list[str] = []
    flow = Flow("stuck")

    @flow.on_open
    def hello(conn: Connection) -> None:
        conn.send(b"welcome")

    @flow.step
    async def forever(conn: Connection, message: bytes) -> bool:
        events.append("handler started")
        try:
            await anyio.sleep_forever()
        finally:
            events.append("handler cancelled")
        return True  # pragma: no cover

    @flow.on_close
    async def cleanup(conn: Connection) -> None:
        await anyio.sleep(0.01)
        events.append(f"on_close {conn.close_code}")

    poke = Flow("poke")

    @poke.step
    def answer(conn: Connection, message: bytes) -> bool:
        conn.send(b"go")
        return False

    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter()) as other, connect(other.url, make_sink()) as client:
            client.send(b"ping")
        assert len(anyio.get_running_tasks()) == before
        async with serve(flow) as server:
            results = []

            async def live_client() -> None:
                results.append(await run_client(server.url, poke))

            async with anyio.create_task_group() as tg:
                tg.start_soon(live_client)
                while "handler started" not in events:
                    await anyio.sleep(0.005)
                # server main, live_client and the pending handler at least
                assert len(anyio.get_running_tasks()) >= before + 3
                await server.shutdown()
            assert server.active == 0
    assert results[0].code == 1001
    assert events == ["handler started", "handler cancelled", "on_close 1001"]
    assert len(anyio.get_running_tasks()) == before


async def test_body_exception_is_not_wrapped_and_closes_1011() -> None:
    log = Log()
    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(log=log)) as server:
            with pytest.raises(KeyError):
                async with connect(server.url, make_sink()):
                    raise KeyError("boom")
            while not log:
                await anyio.sleep(0.005)
    assert log[0].code == 1011


async def test_http_handler_answers_plain_requests() -> None:
    def http(request: HandshakeRequest) -> HttpResponse | None:
        return HttpResponse(200, b"ok\n") if request.path == "/health" else None

    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(), http_handler=http) as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            async with stream:
                await stream.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                response = b""
                try:
                    while True:
                        response += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"ok\n")


async def test_bad_arguments() -> None:
    flow = make_greeter()
    with pytest.raises(TypeError):
        serve(flow, max_sise=10)
    with pytest.raises(LocalProtocolError):
        serve(flow, max_queue=0)
    with pytest.raises(ValueError):
        connect("http://127.0.0.1/", flow)
    with pytest.raises(ValueError):
        connect("ws://127.0.0.1/", flow, ssl=__import__("ssl").create_default_context())
    with pytest.raises(LocalProtocolError):
        serve({"no-slash": flow})


async def test_unreachable_server_raises_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await run_client(f"ws://127.0.0.1:{port}/", make_sink())


async def test_handler_exception_is_logged_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    flow = Flow("buggy")

    @flow.step
    async def boom(conn: Connection, message: bytes) -> bool:
        raise RuntimeError("secret detail")

    client = Flow("poke")

    @client.on_open
    def poke(conn: Connection) -> None:
        conn.send(b"x")

    @client.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    with caplog.at_level(logging.ERROR, logger="socker"), anyio.fail_after(deadline(5)):
        async with serve(flow) as server:
            result = await run_client(server.url, client)
    assert result.code == 1011
    assert "secret" not in result.reason
    assert any("secret detail" in str(r.exc_info) for r in caplog.records)


def test_plain_asyncio_run_with_async_handlers() -> None:
    """Under `asyncio.run` (not anyio's runner) handler tasks start from protocol
    callbacks, where anyio cannot sniff its backend by itself."""
    import asyncio

    flow = Flow("slow-echo")

    @flow.step
    async def echo(conn: Connection, message: bytes) -> bool:
        await asyncio.sleep(0.001)
        conn.send(message)
        return message == b"last"

    got: list[bytes] = []
    client = Flow("talk")

    @client.on_open
    def talk(conn: Connection) -> None:
        conn.send(b"one")
        conn.send(b"last")

    @client.step
    def hear(conn: Connection, message: bytes) -> bool:
        got.append(message)
        return message == b"last"

    async def main() -> Any:
        async with serve(flow) as server:
            return await asyncio.wait_for(run_client(server.url, client), deadline(5))

    result = asyncio.run(main())
    assert result.ok, result
    assert got == [b"one", b"last"]


async def test_write_backpressure_then_4503_for_a_peer_that_stops_reading() -> None:
    """A peer that reads nothing: the server's writes back up (the transport stops
    taking them, the wire keeps them) until max_send_buffer, then 4503; sends from
    another task keep working until then and the timers keep running."""
    flow = Flow("firehose")
    closes: list[int | None] = []

    @flow.step
    def listen(conn: Connection, message: bytes) -> bool:
        return False

    @flow.on_close
    def closed(conn: Connection) -> None:
        closes.append(conn.close_code)

    with anyio.fail_after(deadline(10)):
        async with serve(flow, max_send_buffer=1 << 20) as server:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.sendall(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                while not server.connections:
                    await anyio.sleep(0.005)
                (conn,) = server.connections
                chunk = b"x" * 65536
                sent = 0
                while conn.is_open and sent < 4096:  # bounded: 256 MiB at most
                    conn.send(chunk)
                    sent += 1
                    await anyio.sleep(0)  # let the driver write (or not)
                assert not conn.is_open, "the server buffered without limit"
                while server.active:
                    await anyio.sleep(0.005)
            finally:
                sock.close()
    assert closes == [4503]


async def test_on_close_hook_is_bounded_by_close_timeout() -> None:
    """A stuck on_close hook is cancelled after close_timeout; the connection then
    ends and the server shuts down with no task left."""
    before = len(anyio.get_running_tasks())
    events: list[str] = []
    flow = Flow("stuck-cleanup")

    @flow.step
    def done(conn: Connection, message: bytes) -> bool:
        return True  # completes the flow

    @flow.on_close
    async def cleanup(conn: Connection) -> None:
        events.append("cleanup started")
        try:
            await anyio.sleep_forever()
        finally:
            events.append("cleanup cancelled")

    poke = Flow("poke")

    @poke.on_open
    def go(conn: Connection) -> None:
        conn.send(b"go")

    @poke.step
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    with anyio.fail_after(deadline(5)):
        async with serve(flow, close_timeout=0.2) as server:
            result = await run_client(server.url, poke)
            assert result.ok, result
            while server.active:  # the hook holds the connection until cancelled
                await anyio.sleep(0.01)
    assert events == ["cleanup started", "cleanup cancelled"]
    assert len(anyio.get_running_tasks()) == before


async def test_client_cancelled_from_outside_leaves_nothing_behind() -> None:
    """Cancelling the code around `connect()` drops the connection at once (the
    server sees 1011 if the close frame made it out first, else 1006) and ends the
    client's handler tasks."""
    before = len(anyio.get_running_tasks())
    log = Log()
    events: list[str] = []
    client = Flow("busy")

    @client.step
    async def busy(conn: Connection, message: bytes) -> bool:
        events.append("handler started")
        try:
            await anyio.sleep_forever()
        finally:
            events.append("handler cancelled")
        return True  # pragma: no cover

    with anyio.fail_after(deadline(5)):
        async with serve(make_greeter(log=log)) as server:
            with anyio.move_on_after(0.2) as scope:
                async with connect(server.url, client):
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
            while not log:
                await anyio.sleep(0.005)
    assert events == ["handler started", "handler cancelled"]
    assert log[0].code in (1006, 1011)
    assert len(anyio.get_running_tasks()) == before
