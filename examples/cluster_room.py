"""One room across worker processes and machines, on Redis (extra `redis`).

    python examples/cluster_room.py redis://127.0.0.1:6379/0 --workers 2 --port 8765

serves `flow` from N worker processes on one port (`socker_transports.workers`); run
it again on another port or machine with the same Redis and the room spans both.
Each worker opens its own RedisEngine in the workers' `lifespan` and puts every
connection in the room "match" through `EngineRooms` (rooms_bridge.py).

Client protocol: on open the server sends {"pid", "member"} as JSON; "say:TEXT"
broadcasts TEXT to the room (or answers "unavailable:TEXT" while Redis is down),
"shout:TEXT" to the room but the sender; "who" answers "who:" + the JSON list of
members. A gap the engine cannot backfill sends "resync" to every member.
tests/engine/test_cluster.py runs it as two "machines" of two workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from socker_core import Connection, ConnectionClosedError, Flow
from socker_transports import workers
from socker_transports.engine import EngineUnavailable, Resync
from socker_transports.engine.redis_engine import RedisEngine
from socker_transports.engine.rooms_bridge import EngineRooms

PRESENCE_TTL = 15.0
ROOM = "match"

flow = Flow("cluster")
_rooms: list[EngineRooms] = []  # this worker's, set by the lifespan


def rooms() -> EngineRooms:
    return _rooms[0]


@flow.on_open
async def joined(conn: Connection) -> None:
    await rooms().join(conn, ROOM, {"pid": str(os.getpid())})
    conn.send(json.dumps({"pid": os.getpid(), "member": rooms().member_id(conn)}).encode())


@flow.step
async def talk(conn: Connection, message: bytes) -> bool:
    if message.startswith(b"say:"):
        try:
            await rooms().broadcast(message[4:], room=ROOM)
        except EngineUnavailable:  # Redis is down: the connection stays up, told so
            conn.send(b"unavailable:" + message[4:])
    elif message.startswith(b"shout:"):  # to everyone but the sender
        await rooms().broadcast(message[6:], room=ROOM, skip=conn)
    elif message == b"who":
        members = sorted(await rooms().presence(ROOM))
        conn.send(b"who:" + json.dumps(members).encode())
    return False


@flow.on_close
async def left(conn: Connection) -> None:
    await rooms().leave_all(conn)


def tell_resync(event: Resync, members: Mapping[str, Connection]) -> None:
    """A gap history cannot fill: every member of the room is told, in order."""
    for conn in members.values():
        with contextlib.suppress(ConnectionClosedError):
            conn.send(b"resync")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/cluster_room.py")
    parser.add_argument("redis_url", metavar="REDIS_URL")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks one")
    parser.add_argument("--presence-ttl", type=float, default=PRESENCE_TTL)
    ns = parser.parse_args(argv)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with RedisEngine(
            ns.redis_url, presence_ttl=ns.presence_ttl, timeout=1.0, reconnect_delay=(0.02, 0.2)
        ) as engine:
            _rooms[:] = [EngineRooms(engine, on_resync=tell_resync)]
            yield

    def announce(supervisor: workers.Supervisor) -> None:
        print(f"socker: serving room {ROOM!r} on {supervisor.url}", flush=True)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    return workers.run(
        flow,
        workers=ns.workers,
        host=ns.host,
        port=ns.port,
        lifespan=lifespan,
        announce=announce,
        close_timeout=2,
    )


if __name__ == "__main__":
    sys.exit(main())
