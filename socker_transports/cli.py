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

The commands live in their own modules (_cli_serve.py, _cli_connect.py; what they
share in _cli_shared.py, _cli_options.py, _cli_targets.py); this module is the
entry point: the parser, logging, `main`, and the small graph and demo commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from socker_core import Flow, __version__

from ._cli_connect import cmd_connect, report
from ._cli_options import _add_option_flags, options_from
from ._cli_serve import cmd_serve, logger
from ._cli_shared import (
    BACKENDS,
    DISTRIBUTION,
    DRIVERS,
    EXIT_BROKEN_PIPE,
    EXIT_CLOSED,
    EXIT_HANDSHAKE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_STATUSES,
    EXIT_USAGE,
    EXTRAS,
    CliError,
    _error,
    _require,
    missing_extra,
)
from ._cli_targets import load_flow, load_routes, load_target

__all__ = [
    "BACKENDS",
    "DISTRIBUTION",
    "DRIVERS",
    "EXIT_BROKEN_PIPE",
    "EXIT_CLOSED",
    "EXIT_HANDSHAKE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "EXTRAS",
    "CliError",
    "OneLineErrorParser",
    "build_parser",
    "cmd_connect",
    "cmd_demo",
    "cmd_graph",
    "cmd_serve",
    "load_flow",
    "load_routes",
    "load_target",
    "logger",
    "main",
    "missing_extra",
    "options_from",
    "report",
]


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
