"""The game server of the tutorial (docs/tutorial.md), built there step by step.

    python examples/tutorial_game.py        # in memory, then over a real socket

    socker serve examples.tutorial_game:server --port 8765
    socker connect ws://127.0.0.1:8765/ examples.tutorial_game:client

The server sends the scene as soon as a player connects, waits (at most 10 s) for
the player to join with a name, then moves the player around a 16 x 16 map until
the player quits. The `# --8<--` lines mark the parts the tutorial shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from socker_core import Close, Connection, Flow, Result
from socker_core.testing import fuzz_flow, run_pair
from socker_transports.anyio import run_client, serve

# --8<-- [start:state]
SIZE = 16  # the map is SIZE x SIZE squares
MOVES = {b"n": (0, -1), b"s": (0, 1), b"e": (1, 0), b"w": (-1, 0)}


@dataclass
class Player:
    """What the server keeps about one connected player (`conn.state`)."""

    name: str = ""
    x: int = 0
    y: int = 0
    moves: int = 0


# --8<-- [end:state]

# --8<-- [start:server]
server = Flow("game-server", state=Player)


@server.on_open
def send_scene(conn: Connection[Player]) -> None:
    # The server speaks first: the new player needs the map before anything else.
    conn.send(b"scene:harbour:16x16")


@server.step(timeout=10)
def join(conn: Connection[Player], message: bytes) -> Result:
    if not message.startswith(b"join:") or len(message) > 5 + 32:
        return Close(4001, "expected join:<name>")
    conn.state.name = message[5:].decode("utf-8", "replace")
    conn.send(b"welcome:" + conn.state.name.encode())
    return True  # advance: the next message goes to `play`


@server.step
def play(conn: Connection[Player], message: bytes) -> Result:
    if message == b"quit":
        return True  # past the last step: the flow completes, close 1000
    step = MOVES.get(message)
    if step is None:
        return False  # stay: an unknown command is ignored
    player = conn.state
    player.x = min(SIZE - 1, max(0, player.x + step[0]))
    player.y = min(SIZE - 1, max(0, player.y + step[1]))
    player.moves += 1
    conn.send(f"at:{player.x},{player.y}".encode())
    return False  # stay: the game lasts until the player quits


# --8<-- [end:server]

# --8<-- [start:client]
client = Flow("game-client")


@client.step
def load_scene(conn: Connection, message: bytes) -> Result:
    assert message.startswith(b"scene:")
    conn.send(b"join:ada")
    return True


@client.step
def welcomed(conn: Connection, message: bytes) -> Result:
    conn.send(b"e")
    return True


@client.step
def walk(conn: Connection, message: bytes) -> Result:
    if message == b"at:3,0":
        conn.send(b"quit")
    else:
        conn.send(b"e")
    return False  # stay until the server closes


# --8<-- [end:client]


# --8<-- [start:main]
async def main() -> None:
    async with serve(server, "127.0.0.1", 0) as running:  # port 0: any free port
        print("serving on", running.url)
        result = await run_client(running.url, client)
    print("client ended:", result.code, result.reason)  # 1000 flow complete


# --8<-- [end:main]


if __name__ == "__main__":
    # --8<-- [start:in-memory]
    transcript = run_pair(server, client)
    print(transcript.table())
    assert transcript.server_code == 1000
    # --8<-- [end:in-memory]
    # --8<-- [start:fuzz]
    stats = fuzz_flow(server, max_examples=100)
    print("fuzzed", stats.runs, "runs; close codes seen:", dict(stats.close_codes))
    # --8<-- [end:fuzz]
    anyio.run(main)
