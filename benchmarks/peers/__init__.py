"""Echo servers for the benchmarks, one module per implementation.

Each module has `serve(port, ready, lifetime)`: listen on 127.0.0.1:`port`
(0 = any), call `ready(actual_port)` once listening, echo every binary message
back whole, and return after `lifetime` seconds at the latest. Every server is
in its best ordinary configuration: compression off, `max_size` = `MAX_SIZE`.

`python -m benchmarks.peers NAME` runs one in its own process (see `__main__`).
"""

from __future__ import annotations

from collections.abc import Callable

MAX_SIZE = 1024 * 1024  # the same message limit everywhere (socker's default)
HOST = "127.0.0.1"

Ready = Callable[[int], None]

#: implementation name -> module in this package
PEERS: dict[str, str] = {
    "socker-anyio-asyncio": "socker_anyio",
    "socker-anyio-uvloop": "socker_anyio",
    "socker-anyio-trio": "socker_anyio",
    "socker-threaded": "socker_threaded",
    "websockets-asyncio": "websockets_asyncio",
    "websockets-sync": "websockets_sync",
    "trio-websocket": "trio_websocket_peer",
    "raw-wsproto-asyncio": "raw_wsproto",
}

#: Other libraries' servers for the fast-client comparison (`benchmarks.fast`); they
#: need `pip install picows aiohttp`, so the default `python -m benchmarks` run
#: leaves them out unless named with `--only`.
OTHERS: dict[str, str] = {
    "picows-uvloop": "picows_peer",
    "aiohttp": "aiohttp_peer",
}

#: Prototypes, measured only when named with `--only`: what a driver built another
#: way would reach (see each module's docstring). Not socker drivers.
PROTOTYPES: dict[str, str] = {
    "proto-wire-protocol": "proto_asyncio",
    "proto-wire-buffered": "proto_asyncio",
    "proto-wire-buffered-uvloop": "proto_asyncio",
}
ALL: dict[str, str] = {**PEERS, **PROTOTYPES, **OTHERS}
