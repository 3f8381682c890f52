"""`trio-websocket` (wsproto on trio), its documented echo-server shape."""

from __future__ import annotations

from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from . import HOST, MAX_SIZE, Ready


async def _echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(message)
    except ConnectionClosed:
        pass


def serve(port: int, ready: Ready, lifetime: float) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, _echo, HOST, port, None, max_message_size=MAX_SIZE)
            )
            ready(server.port)
            await trio.sleep(lifetime)
            nursery.cancel_scope.cancel()

    trio.run(main)
