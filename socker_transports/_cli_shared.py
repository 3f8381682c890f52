"""What every `socker` command shares: exit statuses, the usage error, optional
extras, and the choice of driver and backend."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Any

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


def _error(message: str) -> None:
    print(f"socker: error: {message}", file=sys.stderr, flush=True)
