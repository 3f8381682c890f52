"""One room across worker processes and machines, on Redis (extra `redis`).

    socker serve examples.cluster_room:flow --engine redis://127.0.0.1:6379/0 --workers 2

serves `flow` from 2 worker processes on one port; run it again on another port or
machine with the same Redis and the room spans both. Each worker opens its own
engine; `conn.join`, `server.broadcast(room=)`, `server.publish` and
`server.presence` are cluster-wide. A gap the engine cannot backfill (Redis lost its
data) closes the room's members with 4414 by default; run this file as a script to
see an `on_resync` hook instead, which tells them "resync" and keeps them:

    python examples/cluster_room.py redis://127.0.0.1:6379/0 --workers 2 --port 8765

Client protocol: on open the server sends {"pid", "member"} as JSON; "say:TEXT"
publishes TEXT to the room (confirmed; "unavailable:TEXT" while Redis is down),
"shout:TEXT" broadcasts it to the room but the sender; "who" answers "who:" + the
JSON list of members. tests/engine/test_cluster.py runs it as two "machines" of two
workers each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from socker_core import Connection, ConnectionClosedError, Flow
from socker_transports import workers
from socker_transports.engine import EngineUnavailable, Resync

ROOM = "match"

flow = Flow("cluster")


@flow.on_open
def joined(conn: Connection) -> None:
    conn.join(ROOM, {"pid": str(os.getpid())})  # cluster-wide; the engine follows in order
    conn.send(json.dumps({"pid": os.getpid(), "member": conn.id}).encode())


@flow.step
async def talk(conn: Connection, message: bytes) -> bool:
    server = conn.server
    try:
        if message.startswith(b"say:"):
            await server.publish(message[4:], room=ROOM)  # returns once Redis has it
        elif message.startswith(b"shout:"):  # to everyone but the sender
            server.broadcast(message[6:], room=ROOM, skip=conn)
        elif message == b"who":
            members = sorted(await server.presence(ROOM))
            conn.send(b"who:" + json.dumps(members).encode())
    except EngineUnavailable:  # Redis is down: the connection stays up, told so
        conn.send(b"unavailable:" + message.partition(b":")[2])
    return False


def tell_resync(event: Resync, members: list[Connection]) -> None:
    """A gap history cannot fill: every local member of the room is told, in order,
    and stays (the application rebuilds its state)."""
    for conn in members:
        with contextlib.suppress(ConnectionClosedError):
            conn.send(b"resync")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/cluster_room.py")
    parser.add_argument("engine", metavar="ENGINE_URL", help="redis://HOST:PORT/DB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks one")
    ns = parser.parse_args(argv)

    def announce(supervisor: workers.Supervisor) -> None:
        print(f"socker: serving room {ROOM!r} on {supervisor.url}", flush=True)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    return workers.run(
        flow,
        workers=ns.workers,
        host=ns.host,
        port=ns.port,
        engine=ns.engine,
        on_resync=tell_resync,
        announce=announce,
        close_timeout=2,
    )


if __name__ == "__main__":
    sys.exit(main())
