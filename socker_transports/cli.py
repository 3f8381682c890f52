"""The `socker` command line (also `python -m socker_transports`).

    socker serve MODULE:ATTR [--host H] [--port N] [--backend asyncio|uvloop|trio]
                             [--driver anyio|threaded] [limits...]
    socker connect URL MODULE:ATTR [--backend ...] [--driver ...] [limits...]
    socker graph MODULE:ATTR
    socker demo

MODULE:ATTR names a `Flow` (or, for `serve`, a mapping of path to Flow), like
`uvicorn module:app`; the current directory is importable. Every `wire.Options`
field is an option (`--max-size`, `--ping-interval none`, `--origin` repeatable...).
`-v` / `-vv` go before or after the command.

Every mistake is reported as one line on stderr (`socker: error: ...`) with one of
the exit statuses in `EXIT_STATUSES`; `-vv` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import os
import signal
import ssl as ssl_module
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from socker_core import Flow, FlowDefinitionError, LocalProtocolError, __version__

from .wire import ClientTarget, CloseResult, Options

logger = logging.getLogger("socker")

#: The distribution name on the package index (the import packages and the
#: command are called socker; the name `socker` on the index is someone else's).
DISTRIBUTION = "socker-steps"

EXIT_OK = 0
EXIT_CLOSED = 1
EXIT_USAGE = 2
EXIT_HANDSHAKE = 3
EXIT_NETWORK = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: Every exit status of the `socker` command (the README and `socker --help` show it).
EXIT_STATUSES: dict[int, str] = {
    EXIT_OK: "success: the flow completed or the peer closed with 1000; serve stopped on a signal",
    EXIT_CLOSED: "connect: the connection ended with another close code (printed)",
    EXIT_USAGE: (
        "usage error: bad arguments or option values, a URL that is not ws:// or wss://, "
        "a MODULE:ATTR that cannot be imported, is not a Flow or fails to define, "
        "a missing TLS file, or a feature whose extra is not installed"
    ),
    EXIT_HANDSHAKE: "connect: the server refused the opening handshake (HTTP status printed)",
    EXIT_NETWORK: (
        "connect: the server cannot be reached (refused, DNS, TLS); "
        "serve: cannot listen, or its --engine cannot be reached"
    ),
    EXIT_INTERNAL: "an unexpected error inside socker (a bug: run with -vv for the traceback)",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (SIGINT) outside serve",
    EXIT_BROKEN_PIPE: "the reader of standard output went away (socker graph ... | head)",
}

#: Optional features and the extra that installs each.
EXTRAS: dict[str, tuple[str, str]] = {
    "trio": ("trio", "the trio backend"),
    "uvloop": ("uvloop", "the uvloop backend"),
    "aiortc": ("webrtc", "socker demo"),
}

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
DRIVERS = ("anyio", "threaded")


class CliError(Exception):
    """A usage problem reported as one line and exit status 2."""


def missing_extra(module: str) -> str | None:
    """One line naming the extra to install when `module` cannot be imported, else None."""
    if importlib.util.find_spec(module) is not None:
        return None
    extra, what = EXTRAS[module]
    return f"{what} needs the {extra} extra: pip install '{DISTRIBUTION}[{extra}]'"


def _require(module: str) -> None:
    problem = missing_extra(module)
    if problem is not None:
        raise CliError(problem)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with every error on one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


# -- options ---------------------------------------------------------------------------


def _number(convert: Callable[[str], Any], what: str, *, none: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if none and text.lower() == "none":
            return None
        try:
            return convert(text)
        except ValueError:
            expected = f"{what} or 'none'" if none else what
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


_int_or_none = _number(int, "an integer", none=True)
_float_or_none = _number(float, "a number of seconds", none=True)


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
    "int": _number(int, "an integer", none=False),
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
        raise _TargetFailed(module_name, exc) from exc
    except FlowDefinitionError as exc:
        raise _TargetFailed(module_name, exc, "a flow in it fails to define") from exc
    except Exception as exc:  # the user's module raised while importing
        raise _TargetFailed(module_name, exc) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


class _TargetFailed(CliError):
    """Importing the user's module raised: a usage error whose traceback -vv shows."""

    def __init__(self, module: str, exc: BaseException, what: str = "it raised") -> None:
        super().__init__(f"importing {module!r} failed ({what}): {type(exc).__name__}: {exc}")


def _validated(spec: str, flow: Flow) -> Flow:
    try:
        flow.validate()
    except FlowDefinitionError as exc:
        raise CliError(f"{spec} cannot run: {exc}") from None
    return flow


def load_flow(spec: str) -> Flow:
    """Import MODULE:ATTR and check it is a Flow that can run (CliError otherwise)."""
    obj = load_target(spec)
    if not isinstance(obj, Flow):
        raise CliError(f"{spec} is a {type(obj).__name__}, not a socker Flow")
    return _validated(spec, obj)


def load_routes(spec: str) -> Flow | Mapping[str, Flow]:
    """Import MODULE:ATTR: a Flow, or a mapping of path to Flow (CliError otherwise)."""
    obj = load_target(spec)
    if isinstance(obj, Flow):
        return _validated(spec, obj)
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Flow) for k, v in obj.items())
    ):
        for path, flow in obj.items():
            _validated(f"{spec}[{path!r}]", flow)
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
    if ns.backend in ("trio", "uvloop"):
        _require(ns.backend)
    return BACKENDS[ns.backend or "asyncio"]


# -- serve -----------------------------------------------------------------------------


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


def _checked_options(ns: argparse.Namespace) -> dict[str, Any]:
    options = options_from(ns)
    try:
        Options(**options)  # bad values fail here, before any socket is opened
    except LocalProtocolError as exc:
        raise CliError(str(exc)) from None
    return options


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


# -- connect ---------------------------------------------------------------------------


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


def _error(message: str) -> None:
    print(f"socker: error: {message}", file=sys.stderr, flush=True)


# -- graph and demo --------------------------------------------------------------------


def cmd_graph(ns: argparse.Namespace) -> int:
    """`socker graph`: print the flow (or each routed flow) as a Mermaid diagram."""
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
    if not {"-h", "--help"} & set(ns.demo_args):
        _require("aiortc")  # checked here, before a child process can fail on it
    from . import demo

    return int(demo.main(list(ns.demo_args)))


# -- parser ----------------------------------------------------------------------------


def _exit_table() -> str:
    rows = (
        textwrap.fill(meaning, 79, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, meaning in EXIT_STATUSES.items()
    )
    return "exit statuses:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `socker` command."""
    parser = OneLineErrorParser(
        prog="socker",
        description=(
            "Ordered step chains over binary websockets "
            f"(the {DISTRIBUTION} distribution, version {__version__})."
        ),
        epilog=_exit_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # -v counts before the command (dest verbose) and after it (dest sub_verbose):
    # two dests, so neither parser's default can overwrite the other's count.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v open/close (INFO), -vv every step (DEBUG) and tracebacks",
    )
    parser.add_argument("--version", action="version", version=f"socker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = commands.add_parser(name, **kwargs)
        command.add_argument(
            "-v", "--verbose", action="count", default=0, dest="sub_verbose", help="as socker -v"
        )
        return command

    def driver_flags(command: argparse.ArgumentParser) -> None:
        command.add_argument("--driver", choices=DRIVERS, default="anyio", help="default anyio")
        command.add_argument(
            "--backend", choices=list(BACKENDS), default=None, help="anyio backend (asyncio)"
        )

    serve = sub("serve", help="serve a Flow (or mapping path -> Flow)")
    serve.add_argument("target", metavar="MODULE:ATTR")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=_port, default=8765, help="default 8765; 0 picks one")
    serve.add_argument("--ssl-certfile", default=None, help="serve wss:// with this certificate")
    serve.add_argument("--ssl-keyfile", default=None)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on one port (SO_REUSEPORT), supervised; default 1",
    )
    serve.add_argument(
        "--engine",
        default=None,
        metavar="URL",
        help=(
            "rooms, presence and broadcast across processes and machines: memory://, "
            "redis://HOST:PORT/DB or unix:///PATH (engine options as query parameters, "
            "e.g. ?presence_ttl=5); each worker opens its own"
        ),
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM stop accepting and let live connections finish for up to SECONDS",
    )
    driver_flags(serve)
    _add_option_flags(serve, client=False)
    serve.set_defaults(func=cmd_serve)

    connect = sub("connect", help="run a client Flow; one summary line when it ends")
    connect.add_argument("url", metavar="URL")
    connect.add_argument("target", metavar="MODULE:ATTR")
    connect.add_argument("--origin", default=None, help="the Origin header to send")
    connect.add_argument("--ssl-cafile", default=None, help="trust this CA for wss://")
    driver_flags(connect)
    _add_option_flags(connect, client=True)
    connect.set_defaults(func=cmd_connect)

    graph = sub("graph", help="print a Flow as Mermaid")
    graph.add_argument("target", metavar="MODULE:ATTR")
    graph.set_defaults(func=cmd_graph)

    demo = commands.add_parser(
        "demo",
        help="run the WebRTC game demo (extra webrtc; socker demo --help for its options)",
        add_help=False,
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=cmd_demo)
    return parser


class _OneLineFormatter(logging.Formatter):
    """Log records with an exception (a handler that raised, say) on one line,
    `ExcType: message`; the traceback only at -vv."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info:
            return super().format(record)
        exc = record.exc_info[1]
        plain = logging.makeLogRecord(
            {**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None}
        )
        return f"{super().format(plain)}: {type(exc).__name__}: {exc} (-vv for the traceback)"


def _configure_logging(verbose: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler()
    style = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(style) if verbose >= 2 else _OneLineFormatter(style))
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that configured logging keeps it
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger("socker").setLevel(level)


def _is_verbose_flag(arg: str) -> bool:
    return arg == "--verbose" or (len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"})


def _verbose_count(arg: str) -> int:
    if not _is_verbose_flag(arg):
        return 0
    return 1 if arg == "--verbose" else len(arg) - 1


def _leading_verbosity(args: list[str]) -> tuple[int, int]:
    """How many -v come before the command, and where the command starts."""
    count = 0
    for index, arg in enumerate(args):
        if not _is_verbose_flag(arg):
            return count, index
        count += _verbose_count(arg)
    return count, len(args)


def _quiet_stdout() -> None:
    """The reader of stdout went away: send the rest (and the exit flush) nowhere."""
    with_devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(with_devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(with_devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `socker` command with `argv` (default `sys.argv[1:]`); return its exit
    status. Usage errors raise SystemExit(2) after printing one line."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    verbose, command_at = _leading_verbosity(args)
    if args[command_at : command_at + 1] == ["demo"]:
        # The demo has its own options: hand them over, all but -v (counted here).
        demo_args = [arg for arg in args[command_at + 1 :] if not _is_verbose_flag(arg)]
        verbose += sum(_verbose_count(arg) for arg in args[command_at + 1 :])
        ns = argparse.Namespace(func=cmd_demo, demo_args=demo_args, verbose=verbose)
    else:
        ns = parser.parse_args(args)
        ns.verbose += getattr(ns, "sub_verbose", 0)
    _configure_logging(ns.verbose)
    tracebacks = ns.verbose >= 2
    try:
        status: int = ns.func(ns)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
    except CliError as exc:
        if tracebacks:
            traceback.print_exc()
        parser.exit(EXIT_USAGE, f"socker: error: {exc}\n")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if tracebacks:
            traceback.print_exc()
        _error(f"internal error: {type(exc).__name__}: {exc} (socker -vv shows the traceback)")
        return EXIT_INTERNAL
    return status
