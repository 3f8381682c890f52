"""Must fail mypy --strict on every line marked `# error:` (and nowhere else)."""

from __future__ import annotations

from dataclasses import dataclass

from socker_core import Connection, Flow


@dataclass
class GameState:
    score: int = 0


@dataclass
class Lobby:
    waiting: int = 0


game = Flow("game", state=GameState)
lobby = Flow("lobby", state=Lobby)


@game.step
def play(conn: Connection[GameState], message: bytes) -> bool:
    conn.state.scroe += 1  # error: "GameState" has no attribute "scroe"
    conn.state.score = "high"  # error: Incompatible types in assignment
    return True


@lobby.step  # error: Connection[Lobby]
def wrong_flow(conn: Connection[GameState], message: bytes) -> bool:
    return True


@game.step  # error: Value of type variable
def bad_result(conn: Connection[GameState], message: bytes) -> int:
    return 1
