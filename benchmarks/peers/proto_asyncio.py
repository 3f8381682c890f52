"""PROTOTYPE, not a socker driver: socker's `Wire` inside a bare asyncio protocol,
with no anyio and no task per connection (sync handlers only). It measures what
an asyncio fast path in `socker_transports.anyio` would reach:

- `proto-wire-protocol`: `asyncio.Protocol`; `data_received` feeds the wire and
  writes its output at once; one `call_at` timer for `next_deadline`;
- `proto-wire-buffered`: the same as an `asyncio.BufferedProtocol` reading into one
  preallocated 64 KiB buffer (no 256 KiB bytes object per read);
- `proto-wire-buffered-uvloop`: the buffered one on uvloop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from socker_core import Flow
from socker_transports.wire import Options, Wire

from . import HOST, MAX_SIZE, Ready
from ._flow import echo_flow

READ_BUFFER = 64 * 1024


class _WireProtocol(asyncio.Protocol):
    def __init__(self, routes: Flow, options: Options, loop: asyncio.AbstractEventLoop) -> None:
        self.routes = routes
        self.options = options
        self.loop = loop
        self.timer: asyncio.TimerHandle | None = None
        self.armed: float | None = None
        self.transport: asyncio.Transport | None = None
        self.wire: Wire | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.wire = Wire.server(self.routes, self.loop.time(), self.options)
        self.wire.wakeup = self._after
        self._after()

    def data_received(self, data: bytes) -> None:
        assert self.wire is not None
        self.wire.receive_data(data, self.loop.time())
        self._after()

    def eof_received(self) -> bool:
        assert self.wire is not None
        self.wire.receive_data(None, self.loop.time())
        self._after()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        assert self.wire is not None
        self.wire.abort(self.loop.time(), "connection lost")
        self.wire.events()

    def _tick(self) -> None:
        assert self.wire is not None
        self.armed = None
        self.wire.tick(self.loop.time())
        self._after()

    def _after(self) -> None:
        wire = self.wire
        transport = self.transport
        assert wire is not None and transport is not None
        out = wire.data_to_send()
        if out:
            transport.write(out)
        wire.events()  # sync handlers only in this prototype
        if wire.should_close_transport:
            transport.close()
            return
        deadline = wire.next_deadline
        if deadline != self.armed:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = None if deadline is None else self.loop.call_at(deadline, self._tick)
            self.armed = deadline


class _BufferedWireProtocol(_WireProtocol, asyncio.BufferedProtocol):
    def __init__(self, routes: Flow, options: Options, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(routes, options, loop)
        self.buffer = memoryview(bytearray(READ_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self.wire is not None
        self.wire.receive_data(self.buffer[:nbytes].tobytes(), self.loop.time())
        self._after()


def serve(port: int, ready: Ready, lifetime: float, variant: str = "proto-wire-protocol") -> None:
    buffered = variant.startswith("proto-wire-buffered")
    protocol: Any = _BufferedWireProtocol if buffered else _WireProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        flow = echo_flow()
        options = Options(max_size=MAX_SIZE)
        server = await loop.create_server(lambda: protocol(flow, options, loop), HOST, port)
        async with server:
            ready(server.sockets[0].getsockname()[1])
            await asyncio.sleep(lifetime)

    if variant.endswith("-uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
