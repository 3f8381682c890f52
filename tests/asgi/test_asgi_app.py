"""The App against an in-memory ASGI server (no sockets), on asyncio and trio:
what only the App decides, observed exactly: backpressure (receive is not called
while the Stepper is not accepting), on_close exactly once, step timeouts, the
close codes it chooses, refusals, and the options it leaves to the server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from socker_core import Connection, Flow, LocalProtocolError
from socker_transports.asgi import App
from socker_transports.wire import Reject
from tests.timing import deadline

BACKENDS = ["asyncio", "trio"]


class FakeServer:
    """One websocket scope: the test feeds ASGI events, the App's sends are kept."""

    def __init__(self, path: str = "/", extensions: dict[str, Any] | None = None) -> None:
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[dict[str, Any]](100)
        self.sent: list[dict[str, Any]] = []
        self.receive_calls = 0
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "path": path,
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"x")],
            "subprotocols": [],
            "extensions": extensions or {},
        }

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        return await self._app_inbox.receive()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def put(self, message: dict[str, Any]) -> None:
        await self._to_app.send(message)

    async def message(self, data: bytes) -> None:
        await self.put({"type": "websocket.receive", "bytes": data})

    def data(self) -> list[bytes]:
        return [m["bytes"] for m in self.sent if m["type"] == "websocket.send"]

    def closes(self) -> list[tuple[int, str]]:
        return [
            (m["code"], m.get("reason", "")) for m in self.sent if m["type"] == "websocket.close"
        ]


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(deadline(5)):
        while not condition():
            await anyio.sleep(0.001)


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_receive_is_not_called_while_the_queue_is_full(backend: str) -> None:
    flow = Flow("slow")
    ended: list[int | None] = []

    @flow.step
    async def slow(conn: Connection, message: bytes) -> bool:
        await conn.state.gate.wait()
        conn.send(b"done " + message)
        return False

    @flow.on_close
    def record(conn: Connection) -> None:
        ended.append(conn.close_code)

    async def main() -> None:
        gate = anyio.Event()

        def hook(request: Any) -> Any:
            from socker_transports.wire import Accept

            return Accept(state={"gate": gate})

        app = App(flow, max_queue=2, handshake_hook=hook)
        server = FakeServer()
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, server.scope, server.receive, server.send)
            await server.put({"type": "websocket.connect"})
            for i in range(6):
                await server.message(b"%d" % i)
            # connect, m0 (handler pending), m1 and m2 queued: the queue is full.
            await until(lambda: server.receive_calls >= 4)
            await anyio.wait_all_tasks_blocked()
            assert server.receive_calls == 4
            gate.set()
            await until(lambda: len(server.data()) == 6)
            assert server.data() == [b"done %d" % i for i in range(6)]
            await server.put({"type": "websocket.disconnect", "code": 1000})
        assert ended == [1000]
        assert app.connections == {}

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_timeout_on_open_and_on_close_once(backend: str) -> None:
    flow = Flow("timed")
    closes: list[tuple[int | None, str]] = []

    @flow.on_open
    async def greet(conn: Connection) -> None:
        conn.send(b"hello")

    @flow.step(timeout=0.05)
    def wait(conn: Connection, message: bytes) -> bool:
        return False

    @flow.on_close
    async def record(conn: Connection) -> None:
        closes.append((conn.close_code, conn.close_reason))

    async def main() -> None:
        app = App(flow)
        server = FakeServer()
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, server.scope, server.receive, server.send)
            await server.put({"type": "websocket.connect"})
            await until(lambda: bool(server.closes()))
            assert server.sent[0]["type"] == "websocket.accept"
            assert server.data() == [b"hello"]
            assert server.closes()[0][0] == 4408
            assert closes == []  # closing: on_close runs once the transport is over
            assert len(app.connections) == 1
            await server.put({"type": "websocket.disconnect", "code": 4408})
        assert [code for code, _ in closes] == [4408]
        assert app.connections == {}

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "websocket.receive", "text": "hi"}, 1003),
        ({"type": "websocket.receive", "bytes": b"x" * 11}, 1009),
    ],
    ids=["text", "oversize"],
)
def test_close_codes_are_the_wires(backend: str, message: dict[str, Any], code: int) -> None:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, data: bytes) -> bool:
        conn.send(data)
        return False

    async def main() -> None:
        app = App(flow, max_size=10)
        server = FakeServer()
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, server.scope, server.receive, server.send)
            await server.put({"type": "websocket.connect"})
            await server.message(b"y" * 10)
            await server.put(message)
            await until(lambda: bool(server.closes()))
            assert server.data() == [b"y" * 10]
            assert server.closes()[0][0] == code
            await server.put({"type": "websocket.disconnect", "code": code})

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_timeout_when_the_server_never_reports_the_end(backend: str) -> None:
    flow = Flow("done")
    ended: list[int | None] = []

    @flow.step
    def done(conn: Connection, data: bytes) -> bool:
        return True

    @flow.on_close
    def record(conn: Connection) -> None:
        ended.append(conn.close_code)

    async def main() -> None:
        app = App(flow, close_timeout=0.05)
        server = FakeServer()
        with anyio.fail_after(deadline(5)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app, server.scope, server.receive, server.send)
                await server.put({"type": "websocket.connect"})
                await server.message(b"go")
        assert server.closes() == [(1000, "flow complete")]
        assert ended == [1000]

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extension", [True, False], ids=["http-response", "plain"])
def test_refusals(backend: str, extension: bool) -> None:
    flow = Flow("f")
    flow.add(lambda conn, message: False)

    async def main() -> None:
        app = App({"/a": flow}, handshake_hook=lambda request: Reject(401, b"no"))
        extensions = {"websocket.http.response": {}} if extension else {}
        for path, status in (("/a", 401), ("/b", 404)):
            server = FakeServer(path, extensions)
            await server.put({"type": "websocket.connect"})
            with anyio.fail_after(deadline(5)):
                await app(server.scope, server.receive, server.send)
            if extension:
                assert server.sent[0]["type"] == "websocket.http.response.start"
                assert server.sent[0]["status"] == status
            else:
                assert server.sent == [{"type": "websocket.close", "code": 1008}]

    run(backend, main)


def test_server_owned_options_are_refused() -> None:
    flow = Flow("f")
    flow.add(lambda conn, message: False)
    with pytest.raises(LocalProtocolError, match="ws-ping-interval"):
        App(flow, ping_interval=5)
    with pytest.raises(LocalProtocolError, match="must start with '/'"):
        App({"a": flow})


def game_like_flow() -> Flow:
    flow = Flow("two-steps")

    @flow.step
    def first(conn: Connection, message: bytes) -> bool:
        conn.send(b"first " + message)
        return True

    @flow.step
    def second(conn: Connection, message: bytes) -> bool:
        conn.send(b"second " + message)
        return True

    return flow


@pytest.mark.parametrize("backend", BACKENDS)
def test_drain_refuses_new_handshakes_and_lets_live_flows_finish(backend: str) -> None:
    async def main() -> None:
        app = App(game_like_flow())
        live = FakeServer(extensions={"websocket.http.response": {}})
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, live.scope, live.receive, live.send)
            await live.put({"type": "websocket.connect"})
            await live.message(b"a")
            await until(lambda: live.data() == [b"first a"])
            done = anyio.Event()

            async def drain() -> None:
                await app.shutdown(drain=True, drain_timeout=deadline(5))
                done.set()

            tg.start_soon(drain)
            late = FakeServer(extensions={"websocket.http.response": {}})
            await late.put({"type": "websocket.connect"})
            with anyio.fail_after(deadline(5)):
                await app(late.scope, late.receive, late.send)
            assert late.sent[0]["status"] == 503
            assert not done.is_set()
            await live.message(b"b")  # the live flow completes: 1000
            await until(lambda: bool(live.closes()))
            assert live.closes() == [(1000, "flow complete")]
            await live.put({"type": "websocket.disconnect", "code": 1000})
            with anyio.fail_after(deadline(5)):
                await done.wait()
        assert app.connections == {}

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_with_1012_and_subprotocols(backend: str) -> None:
    async def main() -> None:
        app = App(game_like_flow(), subprotocols=["game.v2", "game.v1"])
        server = FakeServer()
        server.scope["subprotocols"] = ["game.v1", "game.v2"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, server.scope, server.receive, server.send)
            await server.put({"type": "websocket.connect"})
            await until(lambda: bool(server.sent))
            assert server.sent[0] == {"type": "websocket.accept", "subprotocol": "game.v2"}
            await until(lambda: len(app.connections) == 1)
            app.close(1012)
            await until(lambda: bool(server.closes()))
            assert server.closes() == [(1012, "service restart")]
            await server.put({"type": "websocket.disconnect", "code": 1012})

    run(backend, main)
