"""The two servers of `benchmarks.cluster_broadcast`, each 2 worker processes on one
port sharing one Redis. Both speak the same little application:

- every connection joins the room "all" when it opens, and is told the pid of the
  worker that holds it (socker: a binary message `hi:PID`; socket.io: an event `hi`);
- a trigger message carrying a round number (8 hex digits) makes the worker that
  received it broadcast, to the whole room on every worker, 64 B: the round's 8 hex
  digits and 56 `x` (socker: `go:RRRRRRRR` -> `conn.server.broadcast(data,
  room="all")`, which hands it to the server's ordered publisher on the engine;
  socket.io: event `go` -> `await sio.emit("b", data, room="all")`).

Run by the benchmark as

    socker serve benchmarks.cluster_servers:FLOW --port 0 --workers 2 --engine URL \
        --backend asyncio --ping-interval none --close-timeout 2
    python -m benchmarks.cluster_servers sio --redis URL --port P [--loop uvloop]
        [--http uvicorn|aiohttp]

(the socket.io command is one worker; the benchmark starts two on one port with
SO_REUSEPORT, the way `socker serve --workers 2` spreads connections). `socker serve`
announces its URL on its first line, a socket.io worker prints {"ready": pid}; both
stop on SIGTERM, and a socket.io worker ends by itself after `LIFETIME` seconds
whatever happens to its parent (socker's workers drain when their supervisor goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
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


# -- socker: one flow; `socker serve ... --workers 2 --engine URL` serves it ---------

FLOW = Flow("cluster-broadcast")


@FLOW.on_open
def _joined(conn: Connection) -> None:
    conn.join(ROOM)  # cluster-wide: the engine join follows in order
    conn.send(f"hi:{os.getpid()}".encode())


@FLOW.step
def _relay(conn: Connection, message: bytes) -> bool:
    if message.startswith(b"go:"):  # to the room on every worker, through Redis
        conn.server.broadcast(message[3:11] + FILL_BYTES, room=ROOM)
    return False


def socker_command(redis_url: str, workers: int, backend: str) -> list[str]:
    """The `socker serve` command line of the socker side (as a user would run it)."""
    return [
        sys.executable, "-m", "socker_transports", "serve", "benchmarks.cluster_servers:FLOW",
        "--port", "0", "--workers", str(workers), "--engine", redis_url,
        "--backend", backend, "--ping-interval", "none", "--close-timeout", "2",
    ]  # fmt: skip


# -- python-socketio: AsyncServer on aiohttp with AsyncRedisManager -------------------


def serve_sio(redis_url: str, port: int, loop: str, http: str) -> int:
    """One socket.io worker on `port` (SO_REUSEPORT), on aiohttp or uvicorn (ASGI)."""
    import socketio

    watchdog()
    manager = socketio.AsyncRedisManager(redis_url)
    # Websocket only (no long-polling: no sticky sessions needed across workers);
    # engine.io pings far apart, as socker's are off (the clients answer them anyway).
    sio = socketio.AsyncServer(
        async_mode="aiohttp" if http == "aiohttp" else "asgi",
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

    if http == "aiohttp":
        run_loop(lambda: _on_aiohttp(sio, port, pid), loop)
    else:
        run_loop(lambda: _on_uvicorn(socketio.ASGIApp(sio), port, pid, loop), loop)
    return 0


async def _on_aiohttp(sio: Any, port: int, pid: int) -> None:
    from aiohttp import web

    app = web.Application()
    sio.attach(app)
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


async def _on_uvicorn(app: Any, port: int, pid: int, loop: str) -> None:
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app, loop=loop, log_level="warning", access_log=False, lifespan="off", ws="auto"
    )
    server = uvicorn.Server(config)  # stops on SIGTERM/SIGINT by itself

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        emit(ready=pid)

    task = asyncio.create_task(announce())
    await server.serve(sockets=[sock])
    task.cancel()


def run_loop(main: Callable[[], Any], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_servers")
    parser.add_argument("system", choices=["sio"])
    parser.add_argument("--redis", required=True, metavar="URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    parser.add_argument("--http", default="uvicorn", choices=["aiohttp", "uvicorn"])
    ns = parser.parse_args(argv)
    return serve_sio(ns.redis, ns.port, ns.loop, ns.http)


if __name__ == "__main__":
    sys.exit(main())
