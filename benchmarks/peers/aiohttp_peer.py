"""`aiohttp` (its websocket server on asyncio): `async for msg in ws: await ws.send_bytes(...)`."""

from __future__ import annotations

import asyncio
from typing import Any

from . import HOST, MAX_SIZE, Ready


def serve(port: int, ready: Ready, lifetime: float) -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        # aiohttp refuses a message of exactly max_msg_size: one more byte, as the others.
        ws = web.WebSocketResponse(max_msg_size=MAX_SIZE + 1, compress=False, autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        server: Any = site._server  # the listening asyncio.Server (for its port)
        ready(server.sockets[0].getsockname()[1])
        await asyncio.sleep(lifetime)
        await runner.cleanup()

    asyncio.run(main())
