"""`picows` (Cython, asyncio on uvloop): echoes each frame back as it arrives."""

from __future__ import annotations

import asyncio

from . import HOST, MAX_SIZE, Ready


def serve(port: int, ready: Ready, lifetime: float) -> None:
    import uvloop
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    class Echo(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

    def listener(request: WSUpgradeRequest) -> WSListener:
        return Echo()

    async def main() -> None:
        server = await ws_create_server(listener, HOST, port, max_frame_size=MAX_SIZE)
        ready(server.sockets[0].getsockname()[1])
        await asyncio.sleep(lifetime)

    uvloop.run(main())
