"""socker's ASGI App behind the blocking conformance contract (tests/transports/harness.py).

The App is mounted at "/" inside a framework (FastAPI under uvicorn, Starlette
under hypercorn) next to an ordinary HTTP route, so every conformance test also
crosses the framework's routing. Clients are socker's anyio client on asyncio.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Callable, Mapping
from typing import Any

from socker_core import Flow
from socker_transports.asgi import App
from socker_transports.wire import CloseResult, HandshakeHook
from tests.asgi.apps import fastapi_app, starlette_app
from tests.asgi.servers import (
    HypercornThread,
    HypercornTrioThread,
    ServerThread,
    UvicornThread,
    UvicornWsprotoThread,
)
from tests.transports.harness_anyio import AnyioHarness

STACKS: dict[str, tuple[Callable[[dict[str, Any]], Any], type[ServerThread]]] = {
    "asgi-fastapi-uvicorn": (fastapi_app, UvicornThread),
    "asgi-fastapi-uvicorn-wsproto": (fastapi_app, UvicornWsprotoThread),
    "asgi-starlette-hypercorn": (starlette_app, HypercornThread),
    "asgi-starlette-hypercorn-trio": (starlette_app, HypercornTrioThread),
}


class AsgiHarness:
    def __init__(self, name: str) -> None:
        self.name = name
        self.framework, self.server_type = STACKS[name]
        self._client = AnyioHarness("anyio-asyncio", "asyncio", {})

    def start_server(
        self,
        routes: Flow | Mapping[str, Flow],
        *,
        ssl: ssl_module.SSLContext | None = None,
        handshake_hook: HandshakeHook | None = None,
        **options: Any,
    ) -> ServerThread:
        assert ssl is None, "TLS belongs to the ASGI server, not to the App"
        app = App(routes, handshake_hook=handshake_hook, **options)
        return self.server_type(self.framework({"/": app}), [app]).start()

    def run_client(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float,
        **options: Any,
    ) -> CloseResult:
        return self._client.run_client(url, flow, ssl=ssl, timeout=timeout, **options)
