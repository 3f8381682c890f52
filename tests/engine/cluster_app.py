"""One "machine" of the cluster tests: `python -m tests.engine.cluster_app REDIS_URL N`
serves `flow` from N workers (workers.run) on a free port; each worker opens its own
RedisEngine in the lifespan and puts every connection in the room "match".

Client protocol: on open the server sends {"pid", "member"} as JSON; "say:TEXT"
broadcasts TEXT to the room (or answers "unavailable:TEXT" while Redis is down),
"shout:TEXT" to the room but the sender; "who" answers "who:" + the JSON list of
members. A gap the engine cannot backfill sends "resync" to every member.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from socker_core import Connection, ConnectionClosedError, Flow
from socker_transports import workers
from socker_transports.engine import EngineUnavailable, Resync
from socker_transports.engine.redis_engine import RedisEngine
from socker_transports.engine.rooms_bridge import EngineRooms

PRESENCE_TTL = 1.5
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


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with RedisEngine(
            url, presence_ttl=PRESENCE_TTL, timeout=1.0, reconnect_delay=(0.02, 0.2)
        ) as engine:
            _rooms[:] = [EngineRooms(engine, on_resync=tell_resync)]
            yield

    def announce(supervisor: workers.Supervisor) -> None:
        print(f"socker: serving on {supervisor.url}", flush=True)

    sys.exit(
        workers.run(flow, workers=count, port=0, lifespan=lifespan, announce=announce,
                    close_timeout=2)
    )  # fmt: skip


if __name__ == "__main__":
    main()
