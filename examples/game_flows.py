"""The original README's game handshake as two flows, for the command line:

socker serve examples.game_flows:server --port 8765
socker connect ws://127.0.0.1:8765/ examples.game_flows:client
"""

from __future__ import annotations

from socker_core import Close, Connection, Flow

server = Flow("game-server", step_timeout=30)
client = Flow("game-client", step_timeout=30)


@server.on_open
def send_scene(conn: Connection) -> None:
    # The server speaks first: every buffered object the new player needs.
    conn.send(b"scene:" + b"tree;" * 64)


@server.step
def handshake(conn: Connection, message: bytes) -> bool:
    if message != b"ready":
        return False
    conn.send(b"offer:v=0")
    return True


@server.step
def answer(conn: Connection, message: bytes) -> bool:
    conn.state.answer = message
    conn.send(b"joined")
    return True


@server.step
def control(conn: Connection, message: bytes) -> bool | Close:
    if message == b"leave":
        return Close(1000, "player left")
    conn.send(b"ack:" + message)
    return False


@client.step
def build_scene(conn: Connection, message: bytes) -> bool:
    conn.state.objects = message.count(b";")
    conn.send(b"ready")
    return True


@client.step
def take_offer(conn: Connection, message: bytes) -> bool:
    conn.send(b"answer:v=0")
    return True


@client.step
def joined(conn: Connection, message: bytes) -> bool:
    conn.send(b"spawn")
    return True


@client.step
def play(conn: Connection, message: bytes) -> bool:
    conn.send(b"leave")
    return False
