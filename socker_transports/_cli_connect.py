"""`socker connect`: run a client flow once and report how it ended."""

from __future__ import annotations

import argparse
import ssl as ssl_module
import time
from typing import Any

from socker_core import Flow

from ._cli_options import _checked_options
from ._cli_shared import (
    EXIT_CLOSED,
    EXIT_HANDSHAKE,
    EXIT_NETWORK,
    EXIT_OK,
    CliError,
    _backend,
    _driver_module,
    _error,
)
from ._cli_targets import load_flow
from .wire import ClientTarget, CloseResult


def cmd_connect(ns: argparse.Namespace) -> int:
    """`socker connect`: run a client flow once; return the exit status."""
    try:
        target = ClientTarget.parse(ns.url)
    except ValueError as exc:
        message = str(exc)
        raise CliError(message if ns.url in message else f"bad URL {ns.url!r}: {message}") from None
    flow = load_flow(ns.target)
    options = _checked_options(ns)
    ssl = None
    if ns.ssl_cafile is not None:
        if not target.secure:
            raise CliError("--ssl-cafile needs a wss:// URL")
        try:
            ssl = ssl_module.create_default_context(cafile=ns.ssl_cafile)
        except (OSError, ssl_module.SSLError) as exc:
            raise CliError(f"cannot load the CA file {ns.ssl_cafile!r}: {exc}") from None
    kwargs: dict[str, Any] = {"ssl": ssl, "origin": ns.origin, **options}
    backend, backend_options = _backend(ns)
    module = _driver_module(ns.driver)
    started = time.monotonic()
    try:
        if ns.driver == "threaded":
            result = module.run_client(ns.url, flow, **kwargs)
        else:
            import anyio

            async def run() -> CloseResult:
                result: CloseResult = await module.run_client(ns.url, flow, **kwargs)
                return result

            result = anyio.run(run, backend=backend, backend_options=backend_options)
    except (OSError, TimeoutError) as exc:
        _error(f"cannot connect to {ns.url}: {exc or type(exc).__name__}")
        return EXIT_NETWORK
    return report(result, url=ns.url, flow=flow, seconds=time.monotonic() - started)


def report(
    result: CloseResult, *, url: str = "", flow: Flow | None = None, seconds: float | None = None
) -> int:
    """Print how a client connection ended (one line); return the exit status.

    Success goes to stdout (`socker: <url>: flow 'x' ended 1000 'flow complete' in
    0.05 s`); a refused handshake or another close code goes to stderr."""
    if result.handshake_status != 101:
        status = f"HTTP {result.handshake_status}" if result.handshake_status else "no response"
        _error(f"handshake failed: {status} ({result.reason})")
        return EXIT_HANDSHAKE
    if result.code == 1000:
        where = f"{url}: " if url else ""
        name = f"flow {flow.name!r} " if flow is not None else ""
        took = f" in {seconds:.2f} s" if seconds is not None else ""
        print(f"socker: {where}{name}ended 1000 {result.reason!r}{took}", flush=True)
        return EXIT_OK
    _error(f"connection closed: {result.code} {result.reason}")
    return EXIT_CLOSED
