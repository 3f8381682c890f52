"""The `socker` command line (also `python -m socker_transports`).

    socker serve MODULE:ATTR [--host H] [--port N] [--backend asyncio|uvloop|trio]
                             [--driver anyio|threaded] [limits...]
    socker connect URL MODULE:ATTR [--backend ...] [--driver ...] [limits...]
    socker graph MODULE:ATTR
    socker demo

MODULE:ATTR names a `Flow` (or, for `serve`, a mapping of path to Flow), like
`uvicorn module:app`; the current directory is importable. Every `wire.Options`
field is an option (`--max-size`, `--ping-interval none`, `--origin` repeatable...).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import ssl as ssl_module
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from socker_core import Flow, LocalProtocolError

from .wire import CloseResult, Options

logger = logging.getLogger("socker")

#: Exit statuses of `socker connect` (and `serve` for start-up failures).
EXIT_OK = 0
EXIT_CLOSED = 1  # the connection ended with a code other than 1000
EXIT_USAGE = 2  # bad arguments or MODULE:ATTR
EXIT_HANDSHAKE = 3  # the opening handshake failed (HTTP status printed)
EXIT_NETWORK = 4  # could not connect (refused, DNS, TLS) or listen

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
DRIVERS = ("anyio", "threaded")


class CliError(Exception):
    """A usage problem reported as one line and exit status 2."""


# -- options ---------------------------------------------------------------------------


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


#: How each `Options` field is spelt on the command line: flag, argparse keywords.
_SPECIAL_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "origins": (
        "--origin",
        {"action": "append", "metavar": "ORIGIN", "help": "allowed Origin (repeatable)"},
    ),
    "subprotocols": (
        "--subprotocol",
        {"action": "append", "metavar": "NAME", "help": "subprotocol to offer/accept (repeatable)"},
    ),
    "accept_text": ("--accept-text", {"action": "store_true", "help": "accept text messages"}),
    "compression": (
        "--compression",
        {"choices": ["deflate"], "help": "negotiate permessage-deflate (default: off)"},
    ),
    "server_no_context_takeover": (
        "--server-no-context-takeover",
        {"action": "store_true", "help": "deflate: the server resets its context per message"},
    ),
    "client_no_context_takeover": (
        "--client-no-context-takeover",
        {"action": "store_true", "help": "deflate: the client resets its context per message"},
    ),
}
_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "int | None": _int_or_none,
    "float | None": _float_or_none,
}


def _add_option_flags(parser: argparse.ArgumentParser, *, client: bool) -> None:
    group = parser.add_argument_group("limits (wire.Options; 'none' disables a timeout)")
    for field in dataclasses.fields(Options):
        if client and field.name == "origins":
            continue  # a server-side allow-list; the client's --origin is its header
        if field.name in _SPECIAL_FLAGS:
            flag, kwargs = _SPECIAL_FLAGS[field.name]
        else:
            convert = _TYPES.get(str(field.type))
            if convert is None:  # a new Options field needs a spelling here
                raise TypeError(f"no command-line spelling for Options.{field.name}")
            flag = "--" + field.name.replace("_", "-")
            kwargs = {"type": convert, "metavar": "N", "help": f"default {field.default}"}
        group.add_argument(flag, dest=f"opt_{field.name}", default=argparse.SUPPRESS, **kwargs)
    if client:
        return
    group.add_argument(
        "--allow-no-origin",
        action="store_true",
        help="with --origin: also admit requests without an Origin header",
    )


def options_from(ns: argparse.Namespace) -> dict[str, Any]:
    """The Options keywords given on the command line (the rest keep their defaults)."""
    given: dict[str, Any] = {}
    for field in dataclasses.fields(Options):
        if hasattr(ns, f"opt_{field.name}"):
            given[field.name] = getattr(ns, f"opt_{field.name}")
    for flag in ("accept_text", "server_no_context_takeover", "client_no_context_takeover"):
        if given.get(flag) is False:
            del given[flag]
    if "subprotocols" in given:
        given["subprotocols"] = tuple(given["subprotocols"])
    if getattr(ns, "allow_no_origin", False):
        given["origins"] = [*given.get("origins", ()), None]
    return given


# -- targets ---------------------------------------------------------------------------


def load_target(spec: str) -> object:
    """Import MODULE:ATTR (ATTR may be dotted); the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (like game.flows:server), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import module {module_name!r}: {exc}") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load_flow(spec: str) -> Flow:
    obj = load_target(spec)
    if not isinstance(obj, Flow):
        raise CliError(f"{spec} is a {type(obj).__name__}, not a socker Flow")
    return obj


def load_routes(spec: str) -> Flow | Mapping[str, Flow]:
    obj = load_target(spec)
    if isinstance(obj, Flow):
        return obj
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Flow) for k, v in obj.items())
    ):
        return obj
    raise CliError(f"{spec} is a {type(obj).__name__}, not a Flow or a mapping path -> Flow")


def _describe(routes: Flow | Mapping[str, Flow]) -> str:
    if isinstance(routes, Flow):
        return f"flow {routes.name!r}"
    return ", ".join(f"{path} -> {flow.name!r}" for path, flow in routes.items())


def _driver_module(name: str) -> Any:
    """The driver module, imported lazily (the threaded one may be absent)."""
    if name == "anyio":
        from . import anyio as module
    else:
        try:
            module = importlib.import_module("socker_transports.threaded")
        except ImportError as exc:
            raise CliError(f"the threaded driver is not available: {exc}") from None
    return module


def _backend(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if ns.driver != "anyio" and ns.backend is not None:
        raise CliError("--backend applies to the anyio driver only")
    return BACKENDS[ns.backend or "asyncio"]


# -- serve -----------------------------------------------------------------------------


def _server_ssl(ns: argparse.Namespace) -> ssl_module.SSLContext | None:
    if ns.ssl_certfile is None:
        if ns.ssl_keyfile is not None:
            raise CliError("--ssl-keyfile needs --ssl-certfile")
        return None
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ns.ssl_certfile, ns.ssl_keyfile)
    return context


def _announce(url: str, routes: Flow | Mapping[str, Flow], how: str) -> None:
    print(f"socker: serving {_describe(routes)} on {url} ({how}); Ctrl-C to stop", flush=True)


def _checked_options(ns: argparse.Namespace) -> dict[str, Any]:
    options = options_from(ns)
    try:
        Options(**options)  # bad values fail here, before any socket is opened
    except LocalProtocolError as exc:
        raise CliError(str(exc)) from None
    return options


def cmd_serve(ns: argparse.Namespace) -> int:
    routes = load_routes(ns.target)
    options = _checked_options(ns)
    ssl = _server_ssl(ns)
    backend, backend_options = _backend(ns)
    module = _driver_module(ns.driver)
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
        serve(routes, ns.host, ns.port, ssl=ssl, **options) as server,
        anyio.create_task_group() as tg,
    ):
        await tg.start(_watch_signals, server)
        _announce(server.url, routes, f"anyio on {ns.backend or 'asyncio'}")
        await server.serve_forever()
        tg.cancel_scope.cancel()
    print("socker: server stopped", flush=True)
    return EXIT_OK


async def _watch_signals(server: Any, *, task_status: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            logger.info("%s: shutting down", signal.Signals(signum).name)
            server.close()


def _serve_threaded(
    module: Any,
    routes: Flow | Mapping[str, Flow],
    ns: argparse.Namespace,
    ssl: ssl_module.SSLContext | None,
    options: dict[str, Any],
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = module.serve(routes, ns.host, ns.port, ssl=ssl, **options)
        with server:

            def run() -> None:
                try:
                    server.serve_forever()
                finally:
                    stop.set()

            runner = threading.Thread(target=run, name="socker-serve-forever")
            runner.start()
            _announce(server.url, routes, "threaded driver")
            stop.wait()
            server.shutdown()
            runner.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("socker: server stopped", flush=True)
    return EXIT_OK


# -- connect ---------------------------------------------------------------------------


def cmd_connect(ns: argparse.Namespace) -> int:
    flow = load_flow(ns.target)
    options = _checked_options(ns)
    ssl = None
    if ns.ssl_cafile is not None:
        ssl = ssl_module.create_default_context(cafile=ns.ssl_cafile)
    kwargs: dict[str, Any] = {"ssl": ssl, "origin": ns.origin, **options}
    backend, backend_options = _backend(ns)
    module = _driver_module(ns.driver)
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
        print(f"socker: cannot connect to {ns.url}: {exc}", file=sys.stderr, flush=True)
        return EXIT_NETWORK
    return report(result)


def report(result: CloseResult) -> int:
    """Print how a client connection ended; return the exit status."""
    if result.handshake_status != 101:
        status = f"HTTP {result.handshake_status}" if result.handshake_status else "no response"
        print(f"socker: handshake failed: {status} ({result.reason})", file=sys.stderr, flush=True)
        return EXIT_HANDSHAKE
    if result.code == 1000:
        logger.info("closed 1000 %s", result.reason)
        return EXIT_OK
    print(f"socker: connection closed: {result.code} {result.reason}", file=sys.stderr, flush=True)
    return EXIT_CLOSED


# -- graph and demo --------------------------------------------------------------------


def cmd_graph(ns: argparse.Namespace) -> int:
    routes = load_routes(ns.target)
    if isinstance(routes, Flow):
        print(routes.mermaid())
    else:
        for index, (path, flow) in enumerate(routes.items()):
            if index:
                print()
            print(f"%% {path}: {flow.name}")
            print(flow.mermaid())
    return EXIT_OK


def cmd_demo(ns: argparse.Namespace) -> int:
    """Run the WebRTC game demo (socker_transports.demo; `socker demo --help`)."""
    try:
        from . import demo
    except ImportError as exc:  # aiortc is the optional `webrtc` extra
        raise CliError(
            f"the demo needs the webrtc extra (pip install 'socker[webrtc]'): {exc}"
        ) from None
    return int(demo.main(list(ns.demo_args)))


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log to stderr: -v open/close (INFO), -vv every step (DEBUG)",
    )
    parser = argparse.ArgumentParser(
        prog="socker",
        description="Ordered step chains over binary websockets.",
        parents=[common],
        epilog=(
            "connect exits 0 when the flow completes or the server closes with 1000, "
            "1 for any other close code, 2 for usage errors, 3 when the handshake "
            "fails, 4 when the server cannot be reached (serve: cannot listen)."
        ),
    )
    parser.set_defaults(verbose=0)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def driver_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--driver", choices=DRIVERS, default="anyio", help="default anyio")
        sub.add_argument(
            "--backend", choices=list(BACKENDS), default=None, help="anyio backend (asyncio)"
        )

    serve = commands.add_parser(
        "serve", parents=[common], help="serve a Flow (or mapping path -> Flow)"
    )
    serve.add_argument("target", metavar="MODULE:ATTR")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks one")
    serve.add_argument("--ssl-certfile", default=None, help="serve wss:// with this certificate")
    serve.add_argument("--ssl-keyfile", default=None)
    driver_flags(serve)
    _add_option_flags(serve, client=False)
    serve.set_defaults(func=cmd_serve)

    connect = commands.add_parser("connect", parents=[common], help="run a client Flow")
    connect.add_argument("url", metavar="URL")
    connect.add_argument("target", metavar="MODULE:ATTR")
    connect.add_argument("--origin", default=None, help="the Origin header to send")
    connect.add_argument("--ssl-cafile", default=None, help="trust this CA for wss://")
    driver_flags(connect)
    _add_option_flags(connect, client=True)
    connect.set_defaults(func=cmd_connect)

    graph = commands.add_parser("graph", parents=[common], help="print a Flow as Mermaid")
    graph.add_argument("target", metavar="MODULE:ATTR")
    graph.set_defaults(func=cmd_graph)

    demo = commands.add_parser(
        "demo", help="run the WebRTC game demo (socker demo --help for its options)", add_help=False
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        # The demo has its own options: hand them over untouched.
        ns = argparse.Namespace(func=cmd_demo, demo_args=args[1:], verbose=0)
    else:
        ns = parser.parse_args(args)
    level = {0: logging.WARNING, 1: logging.INFO}.get(ns.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("socker").setLevel(level)
    try:
        status: int = ns.func(ns)
    except CliError as exc:
        parser.exit(EXIT_USAGE, f"socker: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return status
