"""The threaded driver behind the blocking conformance contract (harness.py).

The server runs on its own accept and connection threads; `stop()` is
`Server.shutdown()`, which returns once every thread it started has ended.
`run_client` runs the client on its connection thread and waits for it, bounded.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Mapping
from typing import Any

from socker_core import Flow
from socker_transports import threaded
from socker_transports.wire import CloseResult, HandshakeHook


class ThreadedRunningServer:
    def __init__(self, server: threaded.Server) -> None:
        self.server = server
        self.port = server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()

    def active_connections(self) -> int:
        return self.server.active_connections()


class ThreadedHarness:
    name = "threaded"

    def start_server(
        self,
        routes: Flow | Mapping[str, Flow],
        *,
        ssl: ssl_module.SSLContext | None = None,
        handshake_hook: HandshakeHook | None = None,
        **options: Any,
    ) -> ThreadedRunningServer:
        server = threaded.serve(
            routes, "127.0.0.1", 0, ssl=ssl, handshake_hook=handshake_hook, **options
        )
        return ThreadedRunningServer(server)

    def run_client(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float,
        **options: Any,
    ) -> CloseResult:
        try:
            client = threaded.connect(url, flow, ssl=ssl, **options)
        except threaded.HandshakeError as exc:
            return exc.result
        with client:
            try:
                return client.wait_closed(timeout)
            except TimeoutError:
                client.abort()
                raise
