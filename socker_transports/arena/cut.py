"""A loopback TCP relay whose connections can be cut, to show a dropped websocket.

The cut bot connects to the server through one of these; `cut()` aborts every
relayed connection with a TCP RST on both sides (no close handshake: what a
blinking wifi looks like to both ends). New connections (the reconnect) are
relayed as before. 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class CutRelay:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self.relayed = 0  # connections accepted so far
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> CutRelay:
        self._server = await asyncio.start_server(self._relay, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()

    def cut(self) -> int:
        """RST every relayed connection now; returns how many were cut."""
        pairs, self._pairs = list(self._pairs), set()
        for a, b in pairs:
            _reset(a)
            _reset(b)
        self.cuts += 1
        return len(pairs)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.relayed += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            if pair in self._pairs:  # an orderly end on one side: pass it on
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            writer.close()
            up_writer.close()
