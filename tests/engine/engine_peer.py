"""A worker process for the engine tests: `python -m tests.engine.engine_peer MODE URL ...`.

- `order URL ROOM NAME COUNT BACKEND`: on BACKEND (asyncio, uvloop, trio), join ROOM,
  print "ready", wait for a line on stdin, publish COUNT messages "NAME:i", then print
  every event received (JSON) once it has seen the expected total (2 * COUNT: two
  peers), and exit.
- `hold URL ROOM MEMBER TTL`: join ROOM as MEMBER with presence_ttl TTL, print "ready",
  and keep its presence alive until killed.
"""

from __future__ import annotations

import json
import sys

import anyio

from socker_transports.engine import Publication, RoomEvent
from socker_transports.engine.redis_engine import RedisEngine


async def order(url: str, room: str, name: str, count: int) -> None:
    events: list[RoomEvent] = []
    enough = anyio.Event()

    def receive(event: RoomEvent) -> None:
        events.append(event)
        if len(events) >= 2 * count:
            enough.set()

    async with RedisEngine(url) as engine:
        engine.set_receiver(receive)
        await engine.join(room, name)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        for index in range(count):
            await engine.publish(room, f"{name}:{index}".encode())
        with anyio.move_on_after(30):
            await enough.wait()
    out = [
        [e.offset, e.epoch, e.data.decode()] if isinstance(e, Publication) else ["resync"]
        for e in events
    ]
    print(json.dumps(out), flush=True)


async def hold(url: str, room: str, member: str, ttl: float) -> None:
    async with RedisEngine(url, presence_ttl=ttl) as engine:
        await engine.join(room, member, {"pid": str(__import__("os").getpid())})
        print("ready", flush=True)
        await anyio.sleep_forever()


def main() -> None:
    mode, url, room, *rest = sys.argv[1:]
    if mode == "order":
        backend, options = {
            "asyncio": ("asyncio", {}),
            "uvloop": ("asyncio", {"use_uvloop": True}),
            "trio": ("trio", {}),
        }[rest[2]]
        anyio.run(order, url, room, rest[0], int(rest[1]), backend=backend, backend_options=options)
    elif mode == "hold":
        anyio.run(hold, url, room, rest[0], float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
