"""The original README's game scenario, run in memory with socker_core.testing.

The server speaks first (on_open sends the buffered scene: the thing the Go
original's README promised but its code could not do), the client answers
with a handshake, the server offers, the client answers, and both then stay in
a control step for reliable messages. No sockets, no event loop, a fake clock.

    python examples/game_inmemory.py
"""

from __future__ import annotations

from socker_core import Close, Connection, Flow
from socker_core.testing import Transcript, run_pair

SCENE = b"scene:players=2;objects=17"


def server_flow() -> Flow:
    flow = Flow("game-server")

    @flow.on_open
    def send_scene(conn: Connection) -> None:
        # Send all buffered data (other players, networked objects, state).
        conn.send(SCENE)

    @flow.step(timeout=10.0)
    def handshake(conn: Connection, message: bytes) -> bool:
        # The client is ready for WebRTC: create the data channel and an offer.
        if message != b"ready":
            return False  # stay until the handshake arrives
        conn.state.offer = b"offer:v=0 o=server"
        conn.send(conn.state.offer)
        return True

    @flow.step(timeout=10.0)
    def answer(conn: Connection, message: bytes) -> bool:
        # The client answered: set the remote description; the channel opens.
        if not message.startswith(b"answer:"):
            return False
        conn.state.remote_description = message.removeprefix(b"answer:")
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool:
        # Reliable control messages; game data would use the data channel.
        if message == b"spawn":
            conn.send(b"spawned:player-2")
        elif message == b"resync":
            conn.send(b"state:tick=42")
        return False  # the last step stays: the connection lives on

    return flow


def client_flow() -> Flow:
    flow = Flow("game-client")

    async def create_answer(offer: bytes) -> bytes:
        # Stands in for aiortc's setRemoteDescription + createAnswer.
        return b"answer:v=0 o=client re=" + offer.removeprefix(b"offer:")

    @flow.step
    def scene(conn: Connection, message: bytes) -> bool:
        # Create all entities, then ask for the WebRTC connection info.
        conn.state.scene = message
        conn.send(b"ready")
        return True

    @flow.step
    async def offer(conn: Connection, message: bytes) -> bool:
        conn.send(await create_answer(message))
        conn.send(b"spawn")
        return True

    @flow.step
    def control(conn: Connection, message: bytes) -> bool | Close:
        # Server data that must reach the client (a player joins, a resync...).
        if message.startswith(b"spawned:"):
            conn.send(b"resync")
            return False
        if message.startswith(b"state:"):
            return Close(1000, "demo over")
        return False

    return flow


def play() -> Transcript:
    return run_pair(server_flow(), client_flow(), latency=0.005)


def main() -> int:
    transcript = play()
    print("## The game handshake, in memory\n")
    print(transcript.table())
    print("\n## Every step on both sides\n")
    print(transcript.log())
    ok = (
        transcript.closed
        and transcript.server_code == 1000
        and transcript.client_code == 1000
        and not transcript.failures()
    )
    print(
        f"\noutcome: {transcript.outcome}; server {transcript.close_of('server')}, "
        f"client {transcript.close_of('client')}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
