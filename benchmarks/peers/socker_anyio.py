"""socker's anyio driver on asyncio, asyncio+uvloop or trio."""

from __future__ import annotations

from typing import Any

import anyio

from . import HOST, MAX_SIZE, Ready
from ._flow import echo_flow


def serve(port: int, ready: Ready, lifetime: float, backend: str = "asyncio") -> None:
    from socker_transports.anyio import serve as socker_serve

    flow = echo_flow()

    async def main() -> None:
        async with socker_serve(flow, HOST, port, max_size=MAX_SIZE) as server:
            ready(server.port)
            await anyio.sleep(lifetime)

    options: dict[str, Any] = {}
    if backend == "uvloop":
        options["use_uvloop"] = True
        backend = "asyncio"
    anyio.run(main, backend=backend, backend_options=options)
