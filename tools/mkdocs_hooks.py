"""MkDocs hooks: the documentation's tables come from the code, so they cannot drift.

A page holds a marker comment; the hook replaces it with a Markdown table:

- `<!-- table: close-codes -->`: `socker_core.CLOSE_CODES`;
- `<!-- table: limits -->`: the fields of `socker_transports.wire.Options`, their
  defaults, and the words of the `Options` docstring (a field without a line there
  fails the build);
- `<!-- table: exit-statuses -->`: `socker_transports.cli.EXIT_STATUSES`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MARKER = re.compile(r"<!-- table: ([a-z-]+) -->")


def _close_codes() -> str:
    from socker_core import CLOSE_CODES

    rows = [f"| {code} | {meaning} |" for code, meaning in sorted(CLOSE_CODES.items())]
    return "\n".join(["| code | meaning |", "|---|---|", *rows])


def _field_words() -> dict[str, str]:
    from socker_transports.wire import Options

    words: dict[str, str] = {}
    bullets = re.split(r"\n\s*- ", "\n" + (Options.__doc__ or ""))[1:]
    for bullet in bullets:
        names, _, text = bullet.partition(":")
        meaning = " ".join(text.split())
        for name in re.findall(r"`([a-z_]+)`", names):
            words[name] = meaning
    return words


def _default(field: dataclasses.Field[Any]) -> str:
    value = field.default
    if isinstance(value, float):
        return f"{value:g} s"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
        for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
            if value % size == 0:
                return f"{value // size} {unit}"
    return f"`{value!r}`"


def _limits() -> str:
    from socker_transports.wire import Options

    words = _field_words()
    rows = []
    for field in dataclasses.fields(Options):
        if field.name not in words:
            raise ValueError(f"Options.{field.name} has no '- `{field.name}`: ...' docstring line")
        rows.append(f"| `{field.name}` | {_default(field)} | {words[field.name]} |")
    return "\n".join(["| option | default | what it does |", "|---|---|---|", *rows])


def _exit_statuses() -> str:
    from socker_transports.cli import EXIT_STATUSES

    rows = [f"| {code} | {meaning} |" for code, meaning in EXIT_STATUSES.items()]
    return "\n".join(["| status | meaning |", "|---|---|", *rows])


TABLES = {"close-codes": _close_codes, "limits": _limits, "exit-statuses": _exit_statuses}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace each table marker with its generated table."""

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown table marker {name!r}")
        return TABLES[name]()

    return MARKER.sub(table, markdown)
