"""The ceiling for any wsproto-based stack: a minimal, correct echo on raw
wsproto over asyncio streams (handshake, whole-message echo, size limit, pings,
close handshake) and nothing else."""

from __future__ import annotations

import asyncio

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from . import HOST, MAX_SIZE, Ready


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    parts: list[bytes | bytearray] = []
    size = 0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            ws.receive_data(data)
            out: list[bytes] = []
            done = False
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    size += len(event.data)
                    if size > MAX_SIZE:
                        out.append(ws.send(CloseConnection(code=1009)))
                        done = True
                        break
                    if event.message_finished:
                        if parts:
                            parts.append(event.data)
                            message = b"".join(parts)
                            parts.clear()
                        else:
                            message = bytes(event.data)
                        size = 0
                        out.append(ws.send(BytesMessage(data=message)))
                    else:
                        parts.append(event.data)
                elif isinstance(event, Request):
                    out.append(ws.send(AcceptConnection()))
                elif isinstance(event, Ping):
                    out.append(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        out.append(ws.send(event.response()))
                    done = True
                elif isinstance(event, TextMessage):
                    out.append(ws.send(CloseConnection(code=1003)))
                    done = True
            if out:
                writer.write(b"".join(out))
                await writer.drain()
            if done:
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def serve(port: int, ready: Ready, lifetime: float) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_handle, HOST, port)
        async with server:
            ready(server.sockets[0].getsockname()[1])
            await asyncio.sleep(lifetime)

    asyncio.run(main())
