"""Must pass mypy --strict: typed options and a typed conn.state."""

from __future__ import annotations

from dataclasses import dataclass, field

from typing_extensions import assert_type

from socker_core import Connection, Flow, Result, Stepper
from socker_transports import anyio as socker_anyio
from socker_transports import threaded, webrtc


@dataclass
class GameState:
    score: int = 0
    players: list[str] = field(default_factory=list)


game = Flow("game", state=GameState)
assert_type(game, Flow[GameState])


@game.on_open
def hello(conn: Connection[GameState]) -> None:
    conn.state.players.append("host")


@game.step(timeout=5)
def play(conn: Connection[GameState], message: bytes) -> Result:
    assert_type(conn.state, GameState)
    conn.state.score += len(message)
    return conn.state.score > 10


# A bare Flow and Connection mean Flow[Any] / Connection[Any], as before the generics.
plain = Flow("plain")


@plain.step
def anything(conn: Connection, message: bytes) -> bool:
    conn.state.whatever = message
    return True


stepper = Stepper(game)
assert_type(stepper.conn, Connection[GameState])


async def serve_and_connect() -> None:
    async with socker_anyio.serve(game, "127.0.0.1", 0, max_size=1024, ping_interval=None) as srv:
        result = await socker_anyio.run_client(srv.url, plain, max_queue=4, origin="x")
        assert result.ok


def threads() -> None:
    with threaded.serve(game, max_send_buffer=1 << 20, origins=["https://a.example"]) as srv:
        threaded.run_client(srv.url, plain, open_timeout=1.0, subprotocols=("v1",))


def signaling(flow: Flow) -> None:
    webrtc.server_offers(flow, label="game", ordered=False, open_timeout=5.0, step_prefix="rtc")
    webrtc.client_answers(flow, step_timeout=None, configuration=None)
