"""The `wire.Options` fields as command-line flags, and back to Options keywords."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from socker_core import LocalProtocolError

from ._cli_shared import CliError
from .wire import Options


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


def _checked_options(ns: argparse.Namespace) -> dict[str, Any]:
    options = options_from(ns)
    try:
        Options(**options)  # bad values fail here, before any socket is opened
    except LocalProtocolError as exc:
        raise CliError(str(exc)) from None
    return options
