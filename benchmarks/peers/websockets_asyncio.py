"""`websockets` (asyncio implementation): `async for message in ws: await ws.send(message)`."""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from . import HOST, MAX_SIZE, Ready


async def _echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


def serve(port: int, ready: Ready, lifetime: float) -> None:
    async def main() -> None:
        async with ws_serve(_echo, HOST, port, compression=None, max_size=MAX_SIZE) as server:
            ready(next(iter(server.sockets)).getsockname()[1])
            await asyncio.sleep(lifetime)

    asyncio.run(main())
