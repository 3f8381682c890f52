"""Room members for the ASGI rooms tests: socker's threaded client speaking the
command protocol of tests/engine/test_server_engine.py ("join ROOM NAME", "say ROOM
TEXT", "shout ...", "pub ...", "who ROOM", ...), and the ASGI stacks serving it."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from socker_core import Connection, Flow
from socker_transports.asgi import App
from socker_transports.threaded import ClientConnection, connect
from tests.asgi.harness_asgi import STACKS
from tests.asgi.servers import HypercornTrioThread, ServerThread
from tests.engine.test_server_engine import CommandPeer, anyio_flow, wait_for
from tests.timing import deadline

__all__ = ["Peer", "anyio_flow", "run_on", "wait_for"]

T = TypeVar("T")


class Peer(CommandPeer):
    """The command protocol over socker's threaded client; room messages are kept in
    order."""

    def __init__(self, url: str) -> None:
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        inbox = self.inbox
        flow = Flow("room-peer")

        @flow.step
        def receive(conn: Connection, message: bytes) -> bool:
            inbox.put(message)
            return False

        @flow.on_close
        def ended(conn: Connection) -> None:
            self.close_code = conn.close_code
            inbox.put(None)

        self.close_code: int | None = None
        self.client: ClientConnection = connect(url, flow, open_timeout=deadline(5))
        self.room_messages: list[bytes] = []

    def recv(self) -> bytes:
        data = self.inbox.get(timeout=deadline(10))
        assert data is not None, f"the connection ended ({self.close_code})"
        return data

    def send_command(self, command: bytes) -> None:
        self.client.send(command)

    def close(self) -> None:
        self.client.close()
        self.client.wait_closed(deadline(10))


@pytest.fixture
def peers() -> Iterator[Callable[[str], Peer]]:
    made: list[Peer] = []

    def make(url: str) -> Peer:
        peer = Peer(url)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def asgi_servers() -> Iterator[Callable[..., tuple[App, ServerThread]]]:
    """start(stack, **app_options): the engine-rooms flow in an App mounted at "/" of
    the stack's framework, served by its real ASGI server (stopped at the end, after
    `App.shutdown()` on the server's loop)."""
    started: list[tuple[App, ServerThread]] = []

    def start(stack: str, **options: Any) -> tuple[App, ServerThread]:
        framework, server_type = STACKS[stack]
        app = App(anyio_flow(), close_timeout=2, **options)
        server = server_type(framework({"/": app}), [app]).start()
        started.append((app, server))
        return app, server

    yield start
    for app, server in started:
        try:
            run_on(server, app.shutdown)  # the engine exited too (its leaves drained)
        finally:
            server.stop()


def run_on(server: ServerThread, func: Callable[[], Awaitable[T]]) -> T:
    """Await `func()` on the ASGI server's event loop; its result."""
    if isinstance(server, HypercornTrioThread):
        import trio

        return trio.from_thread.run(func, trio_token=server._token)  # type: ignore[no-any-return]
    assert server.loop is not None

    async def main() -> T:
        return await func()

    future = asyncio.run_coroutine_threadsafe(main(), server.loop)
    return future.result(timeout=deadline(20))
