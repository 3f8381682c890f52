"""The contract every driver implements for the one conformance suite.

Conformance tests are plain blocking functions: the driver under test runs in
the background (its own thread or event loop), and the tests talk to it with
peers nobody here wrote (the `websockets` library, raw sockets). Each driver
provides a `DriverHarness`; `conftest.py` parametrizes the suite over them.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Mapping
from typing import Any, Protocol

from socker_core import Flow
from socker_transports.wire import CloseResult, HandshakeHook


class RunningServer(Protocol):
    port: int

    @property
    def url(self) -> str: ...  # "ws://127.0.0.1:PORT" (wss:// with TLS)

    def stop(self) -> None:
        """Graceful shutdown: every live connection is closed with 1001 within
        close_timeout; returns when every task/thread the server started is done."""

    def active_connections(self) -> int: ...


class DriverHarness(Protocol):
    name: str

    def start_server(
        self,
        routes: Flow | Mapping[str, Flow],
        *,
        ssl: ssl_module.SSLContext | None = None,
        handshake_hook: HandshakeHook | None = None,
        **options: Any,
    ) -> RunningServer:
        """Start serving on 127.0.0.1, an ephemeral port; return once listening."""

    def run_client(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float,
        **options: Any,
    ) -> CloseResult:
        """Connect, run `flow` until the connection ends (bounded by `timeout`)."""
