"""`socker serve`: one process (anyio or threaded driver) or supervised workers,
until SIGINT/SIGTERM (SIGTERM drains with --drain-timeout)."""

from __future__ import annotations

import argparse
import logging
import signal
import ssl as ssl_module
import sys
import threading
from collections.abc import Mapping
from typing import Any

from socker_core import Flow

from ._cli_options import _checked_options
from ._cli_shared import EXIT_NETWORK, EXIT_OK, CliError, _backend, _driver_module, _error
from ._cli_targets import _describe, load_routes

logger = logging.getLogger("socker")


def _server_ssl(ns: argparse.Namespace) -> ssl_module.SSLContext | None:
    if ns.ssl_certfile is None:
        if ns.ssl_keyfile is not None:
            raise CliError("--ssl-keyfile needs --ssl-certfile")
        return None
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(ns.ssl_certfile, ns.ssl_keyfile)
    except (OSError, ssl_module.SSLError) as exc:
        raise CliError(f"cannot load the certificate {ns.ssl_certfile!r}: {exc}") from None
    return context


def _announce(url: str, routes: Flow | Mapping[str, Flow], how: str) -> None:
    print(f"socker: serving {_describe(routes)} on {url} ({how}); Ctrl-C to stop", flush=True)


def cmd_serve(ns: argparse.Namespace) -> int:
    """`socker serve`: serve until SIGINT/SIGTERM; return the exit status."""
    from .engine.errors import EngineError

    routes = load_routes(ns.target)
    options = _checked_options(ns)
    ssl = _server_ssl(ns)
    backend, backend_options = _backend(ns)
    module = _driver_module(ns.driver)
    if ns.engine is not None:
        _check_engine(ns.engine)
    if ns.workers != 1:
        return _serve_workers(routes, ns, ssl, options)
    try:
        if ns.driver == "threaded":
            return _serve_threaded(module, routes, ns, ssl, options)
        import anyio

        return anyio.run(
            _serve_anyio,
            routes,
            ns,
            ssl,
            options,
            backend=backend,
            backend_options=backend_options,
        )
    except OSError as exc:
        _error(f"cannot serve on {ns.host}:{ns.port}: {exc}")
        return EXIT_NETWORK
    except EngineError as exc:
        _error(f"cannot start the engine {ns.engine}: {exc}")
        return EXIT_NETWORK


def _check_engine(url: str) -> None:
    """A bad `--engine` fails before anything starts (the engine is opened, not
    connected: each worker connects its own)."""
    from .engine import open_engine

    try:
        open_engine(url)
    except (ValueError, TypeError, ImportError) as exc:
        raise CliError(f"--engine: {exc}") from None


def _serve_workers(
    routes: Flow | Mapping[str, Flow],
    ns: argparse.Namespace,
    ssl: ssl_module.SSLContext | None,
    options: dict[str, Any],
) -> int:
    from . import workers

    if ns.workers < 1:
        raise CliError("--workers must be at least 1")
    how = "threaded driver" if ns.driver == "threaded" else f"anyio on {ns.backend or 'asyncio'}"

    def announce(supervisor: workers.Supervisor) -> None:
        _announce(supervisor.url, routes, f"{ns.workers} workers, {how}")

    try:
        return workers.run(
            routes,
            workers=ns.workers,
            host=ns.host,
            port=ns.port,
            driver=ns.driver,
            backend=ns.backend or "asyncio",
            ssl=ssl,
            announce=announce,
            engine=ns.engine,
            **options,
        )
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        print(f"socker: cannot serve on {ns.host}:{ns.port}: {exc}", file=sys.stderr, flush=True)
        return EXIT_NETWORK


async def _serve_anyio(
    routes: Flow | Mapping[str, Flow],
    ns: argparse.Namespace,
    ssl: ssl_module.SSLContext | None,
    options: dict[str, Any],
) -> int:
    import anyio

    from .anyio import serve

    async with (
        serve(routes, ns.host, ns.port, ssl=ssl, engine=ns.engine, **options) as server,
        anyio.create_task_group() as tg,
    ):
        await tg.start(_watch_signals, server, ns.drain_timeout)
        _announce(server.url, routes, f"anyio on {ns.backend or 'asyncio'}")
        await server.serve_forever()
        tg.cancel_scope.cancel()
    print("socker: server stopped", flush=True)
    return EXIT_OK


async def _watch_signals(server: Any, drain_timeout: float | None, *, task_status: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            # SIGTERM drains when --drain-timeout is given; another signal ends the drain.
            drain = signum == signal.SIGTERM and drain_timeout is not None
            logger.info(
                "%s: %s", signal.Signals(signum).name, "draining" if drain else "shutting down"
            )
            server.close(drain=drain, drain_timeout=drain_timeout)


def _serve_threaded(
    module: Any,
    routes: Flow | Mapping[str, Flow],
    ns: argparse.Namespace,
    ssl: ssl_module.SSLContext | None,
    options: dict[str, Any],
) -> int:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        received.append(signum)
        if len(received) > 1:
            server.close()  # a second signal ends a drain
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = module.serve(routes, ns.host, ns.port, ssl=ssl, engine=ns.engine, **options)
        with server:

            def run() -> None:
                try:
                    server.serve_forever()
                finally:
                    stop.set()

            runner = threading.Thread(target=run, name="socker-serve-forever")
            runner.start()
            _announce(server.url, routes, "threaded driver")
            # A timed wait: a signal delivered to another thread only runs its Python
            # handler once the main thread executes bytecode again.
            while not stop.wait(0.2):
                pass
            drain = received[:1] == [signal.SIGTERM] and ns.drain_timeout is not None
            server.shutdown(drain=drain, drain_timeout=ns.drain_timeout)
            runner.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("socker: server stopped", flush=True)
    return EXIT_OK
