"""Flows shared by the transport tests and the command-line tests.

The game handshake mirrors the original Go README: the server's four handlers
(client says hello -> send the buffered scene; client handshake -> send the WebRTC
offer; client answer -> set the remote description; then control messages), and
a client that speaks first, creates the scene, answers the offer and then sends
control messages. "bye" completes the server's flow (close 1000).

Factories take an optional `log` (a list): every flow appends one `Ended` record
from its on_close hook, so a test can see how each side ended. Module-level
instances (`game_server`, `game_client`, ...) are for the command line
(`socker serve tests.transports.flows:game_server`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from socker_core import Close, Connection, Flow

SCENE = b"scene:players=2;objects=17"
OFFER = b"offer:v=0 o=server"
ANSWER_PREFIX = b"answer:"
CONNECTED = b"connected"
SPAWNED = b"spawned:player-2"


@dataclass
class Ended:
    """How one side's flow ended, recorded by its on_close hook."""

    flow: str
    step: str
    code: int | None
    reason: str
    state: dict[str, Any] = field(default_factory=dict)


class Log(list[Ended]):
    """A list of `Ended` records that a test can wait on (appended from the driver's
    thread or loop, read from the test thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def append(self, item: Ended) -> None:
        with self._changed:
            super().append(item)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[Ended]:
        """Wait until at least `count` records are in; return them (AssertionError on timeout)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self) >= count, timeout):
                raise AssertionError(f"expected {count} ended flow(s) within {timeout}s: {self!r}")
            return list(self)


def _recorder(flow: Flow, log: list[Ended] | None) -> None:
    if log is None:
        return

    @flow.on_close
    def record(conn: Connection) -> None:
        log.append(
            Ended(flow.name, conn.step, conn.close_code, conn.close_reason, dict(vars(conn.state)))
        )


def make_game_server(log: list[Ended] | None = None) -> Flow:
    flow = Flow("game-server")

    @flow.step
    def hello(conn: Connection, message: bytes) -> bool:
        # Client connects and sends a message: send all buffered data.
        conn.state.player = message.removeprefix(b"hi ").decode()
        conn.send(SCENE)
        return True

    @flow.step
    def handshake(conn: Connection, message: bytes) -> bool:
        # Client sent the WebRTC handshake: create the channel, send the offer.
        if message != b"ready":
            return False
        conn.send(OFFER)
        return True

    @flow.step
    def answer(conn: Connection, message: bytes) -> bool:
        # Client sent the answer: set the remote description.
        if not message.startswith(ANSWER_PREFIX):
            return False
        conn.state.remote = message.removeprefix(ANSWER_PREFIX).decode()
        conn.send(CONNECTED)
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool:
        # Reliable control messages; "bye" completes the flow.
        if message == b"spawn":
            conn.send(SPAWNED)
        elif message == b"resync":
            conn.send(b"state:tick=42")
        return message == b"bye"

    _recorder(flow, log)
    return flow


def make_game_client(log: list[Ended] | None = None, *, player: str = "p1") -> Flow:
    flow = Flow("game-client")

    @flow.on_open
    def say_hi(conn: Connection) -> None:
        conn.send(b"hi " + player.encode())

    @flow.step
    def scene(conn: Connection, message: bytes) -> bool:
        # Create the scene, then ask for the WebRTC connection info.
        conn.state.scene = message.decode()
        conn.send(b"ready")
        return True

    @flow.step
    async def offer(conn: Connection, message: bytes) -> bool:
        # An async step: stands in for setRemoteDescription + createAnswer.
        conn.state.offer = message.decode()
        conn.send(ANSWER_PREFIX + b"v=0 o=client")
        return True

    @flow.step
    def connected(conn: Connection, message: bytes) -> bool:
        if message != CONNECTED:
            return False
        conn.send(b"spawn")
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool:
        if message == SPAWNED:
            conn.state.spawned = True
            conn.send(b"bye")
        return False  # stay: the server completes and closes with 1000

    _recorder(flow, log)
    return flow


def make_greeter(greeting: bytes = b"welcome", log: list[Ended] | None = None) -> Flow:
    """Speaks first (on_open) with `greeting`, or `conn.state.greeting` when a
    handshake hook seeded it; then echoes until "close" (Close 4000) or "done"."""
    flow = Flow("greeter")

    @flow.on_open
    def greet(conn: Connection) -> None:
        conn.send(getattr(conn.state, "greeting", greeting))

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool | Close:
        if message == b"close":
            return Close(4000, "server says bye")
        if message == b"done":
            return True
        conn.send(message)
        return False

    _recorder(flow, log)
    return flow


def make_waiter(timeout: float | None = None, log: list[Ended] | None = None) -> Flow:
    """Waits for b"never" (with an optional step timeout: 4408)."""
    flow = Flow("waiter")

    @flow.step(timeout=timeout)
    def wait(conn: Connection, message: bytes) -> bool:
        return message == b"never"

    _recorder(flow, log)
    return flow


def make_closer(code: int = 4002, reason: str = "client done") -> Flow:
    """A client that closes with `code` on the first message it gets."""
    flow = Flow("closer")

    @flow.step
    def first(conn: Connection, message: bytes) -> Close:
        return Close(code, reason)

    return flow


def make_sink(log: list[Ended] | None = None) -> Flow:
    """Stays forever, ignoring everything (a client that waits for the server)."""
    flow = Flow("sink")

    @flow.step
    def ignore(conn: Connection, message: bytes) -> bool:
        return False

    _recorder(flow, log)
    return flow


game_server = make_game_server()
game_client = make_game_client()
greeter = make_greeter()
sink = make_sink()
slow_server = make_waiter(timeout=0.3)
routes = {"/game": game_server, "/greet": greeter}
not_a_flow = 42
