"""The anyio driver behind the blocking conformance contract (harness.py).

Each server runs on its own event loop in a background thread
(`anyio.from_thread.start_blocking_portal`); each `run_client` call gets its own
short-lived loop. `stop()` returns once the server's task group has exited and
the loop's thread is joined.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from socker_core import Flow
from socker_transports import anyio as socker_anyio
from socker_transports.wire import CloseResult, HandshakeHook


class AnyioRunningServer:
    def __init__(
        self,
        portal_cm: AbstractContextManager[BlockingPortal],
        portal: BlockingPortal,
        server_cm: AbstractContextManager[socker_anyio.Server],
        server: socker_anyio.Server,
    ) -> None:
        self._portal_cm = portal_cm
        self._portal = portal
        self._server_cm = server_cm
        self.server = server
        self.port = server.port
        self._stopped = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def portal(self) -> BlockingPortal:
        return self._portal

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._server_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def active_connections(self) -> int:
        if self._stopped:
            return 0
        return self._portal.call(lambda: self.server.active)


class AnyioHarness:
    def __init__(self, name: str, backend: str, backend_options: dict[str, Any]) -> None:
        self.name = name
        self.backend = backend
        self.backend_options = backend_options

    def start_server(
        self,
        routes: Flow | Mapping[str, Flow],
        *,
        ssl: ssl_module.SSLContext | None = None,
        handshake_hook: HandshakeHook | None = None,
        **options: Any,
    ) -> AnyioRunningServer:
        server = socker_anyio.serve(
            routes, "127.0.0.1", 0, ssl=ssl, handshake_hook=handshake_hook, **options
        )
        portal_cm = start_blocking_portal(self.backend, self.backend_options)
        portal = portal_cm.__enter__()
        try:
            server_cm = portal.wrap_async_context_manager(server)
            entered = server_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        return AnyioRunningServer(portal_cm, portal, server_cm, entered)

    def run_client(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float,
        **options: Any,
    ) -> CloseResult:
        async def bounded() -> CloseResult:
            with anyio.fail_after(timeout):
                return await socker_anyio.run_client(url, flow, ssl=ssl, **options)

        with start_blocking_portal(self.backend, self.backend_options) as portal:
            return portal.call(bounded)
