"""The two servers of `benchmarks.cluster_broadcast`, each 2 worker processes on one
port sharing one Redis. Both speak the same little application:

- every connection joins the room "all" when it opens, and is told the pid of the
  worker that holds it (socker: a binary message `hi:PID`; socket.io: an event `hi`);
- a trigger message carrying a round number (8 hex digits) makes the worker that
  received it broadcast, to the whole room on every worker, 64 B: the round's 8 hex
  digits and 56 `x` (socker: `go:RRRRRRRR` -> `server.broadcast(...)` through the
  engine; socket.io: event `go` -> `await sio.emit("b", ..., room="all")`).

Run by the benchmark as

    python -m benchmarks.cluster_servers socker --redis URL [--workers 2] [--backend B]
    python -m benchmarks.cluster_servers sio --redis URL --port P [--loop uvloop]

(the socket.io command is one worker; the benchmark starts two on one port with
SO_REUSEPORT, the way `socker serve --workers 2` spreads connections). Each prints one
JSON line once it listens ({"url": ...} or {"ready": pid}) and stops on SIGTERM; every
process ends by itself after `LIFETIME` seconds whatever happens to its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from socker_core import Connection, Flow

ROOM = "all"
FILL = "x" * 56  # after the 8 hex digits of the round: 64 B in all
FILL_BYTES = FILL.encode()
#: Seconds a server process lives at most.
LIFETIME = 600.0


def watchdog(seconds: float = LIFETIME) -> None:
    """End this process after `seconds`, whatever it is doing."""
    timer = threading.Timer(seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- socker: one flow, rooms through the Redis engine ---------------------------------

FLOW = Flow("cluster-broadcast")
_rooms: list[Any] = []  # this worker's EngineRooms, set by the lifespan


@FLOW.on_open
async def _joined(conn: Connection) -> None:
    await _rooms[0].join(conn, ROOM)
    conn.send(f"hi:{os.getpid()}".encode())


@FLOW.step
async def _relay(conn: Connection, message: bytes) -> bool:
    if message.startswith(b"go:"):
        await _rooms[0].broadcast(message[3:11] + FILL_BYTES, room=ROOM)
    return False


def serve_socker(redis_url: str, workers_count: int, backend: str) -> int:
    from socker_transports import workers
    from socker_transports.engine.redis_engine import RedisEngine
    from socker_transports.engine.rooms_bridge import EngineRooms

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        watchdog()
        async with RedisEngine(redis_url) as engine:
            _rooms[:] = [EngineRooms(engine)]
            yield

    def announce(supervisor: workers.Supervisor) -> None:
        emit(url=supervisor.url, pids=supervisor.pids)

    watchdog()
    return workers.run(
        FLOW,
        workers=workers_count,
        host="127.0.0.1",
        port=0,
        backend=backend,
        lifespan=lifespan,
        announce=announce,
        close_timeout=2,
        ping_interval=None,
    )


# -- python-socketio: AsyncServer on aiohttp with AsyncRedisManager -------------------


def serve_sio(redis_url: str, port: int, loop: str) -> int:
    import socketio
    from aiohttp import web

    watchdog()
    manager = socketio.AsyncRedisManager(redis_url)
    # Websocket only (no long-polling: no sticky sessions needed across workers);
    # engine.io pings far apart, as socker's are off (the clients answer them anyway).
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        transports=["websocket"],
        ping_interval=300,
        ping_timeout=60,
        cors_allowed_origins="*",
        logger=False,
        engineio_logger=False,
    )
    pid = os.getpid()

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    async def hello(sid: str, *args: Any) -> None:
        await sio.emit("hi", pid, to=sid)

    async def go(sid: str, round_hex: str) -> None:
        await sio.emit("b", round_hex + FILL, room=ROOM)

    sio.on("connect", connect)
    sio.on("hello", hello)
    sio.on("go", go)

    app = web.Application()
    sio.attach(app)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
        await site.start()
        emit(ready=pid)
        await stop.wait()
        await runner.cleanup()

    run_loop(main, loop)
    return 0


def run_loop(main: Callable[[], Any], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_servers")
    parser.add_argument("system", choices=["socker", "sio"])
    parser.add_argument("--redis", required=True, metavar="URL")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="asyncio", help="socker: anyio backend")
    parser.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    ns = parser.parse_args(argv)
    if ns.system == "socker":
        return serve_socker(ns.redis, ns.workers, ns.backend)
    return serve_sio(ns.redis, ns.port, ns.loop)


if __name__ == "__main__":
    sys.exit(main())
