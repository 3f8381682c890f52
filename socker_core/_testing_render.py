"""Transcript lines and how they read: `Entry`, its words, the Markdown tables and
the Mermaid diagram (re-exported by `socker_core.testing`).

Both kits write these lines: `run_pair` an `Entry` per line, `run_room` a
`RoomEntry` (an Entry that also names its client), worded the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._testing_room import RoomEntry

Side = Literal["server", "client"]
SERVER: Side = "server"
CLIENT: Side = "client"


def other_side(side: Side) -> Side:
    """The other end of the connection."""
    return CLIENT if side == SERVER else SERVER


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a Transcript.

    `kind` is one of: "open", "step" (payload: the step entered), "send" and
    "recv" (payload: the message), "drop" (a message reached a side that is
    closing), "await" / "resume" / "cancel" (async handlers), "failed"
    (payload: the exception; `step` names the failing step), "complete"
    (payload: the last step), "close" (a close was requested; payload:
    (code, reason)), "closed" (payload: (code, reason)), "action" (a scripted
    application action), "stall" (the run ended with this side waiting in step
    `payload`) and "limit" (the run was stopped by max_events or max_time).
    With `drops=`: "lost" (a message in flight at a drop), "detach", "resumed"
    (payload: how many messages this side replays) and "replay" (one of them).
    """

    side: Side
    kind: str
    payload: object
    time: float
    step: str = ""

    def describe(self, markdown: bool = False) -> str:
        """This entry as one line of text (`markdown=True`: with code spans)."""
        return describe(self.kind, self.payload, self.step, markdown)

    def __str__(self) -> str:
        return f"{self.time:10.4f}  {self.side:<6}  {self.describe()}"


#: Kinds `Transcript.table()` and `Transcript.mermaid()` show by default.
SUMMARY_KINDS = frozenset(
    {"open", "step", "send", "failed", "complete", "close", "closed", "action", "stall", "limit"}
)


def pair_of(payload: object) -> tuple[Any, Any]:
    """The (code, reason) of a "close" or "closed" line."""
    if not (isinstance(payload, tuple) and len(payload) == 2):
        raise TypeError(f"expected a (code, reason) pair, got {payload!r}")
    return payload[0], payload[1]


def short(payload: object, limit: int = 48) -> str:
    """`repr(payload)`, cut to `limit` characters (saying how many bytes it had)."""
    text = repr(bytes(payload)) if isinstance(payload, (bytearray, memoryview)) else repr(payload)
    if len(text) > limit:
        size = len(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else None
        text = text[: limit - 1] + "…" + (f" ({size} bytes)" if size is not None else "")
    return text


def _code(text: str, markdown: bool) -> str:
    if not markdown:
        return text
    return "`" + text.replace("`", "\\x60").replace("|", "\\|") + "`"


def _plain(text: str, markdown: bool) -> str:
    if not markdown:
        return text
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def describe(kind: str, payload: object, step: str, markdown: bool) -> str:
    """A transcript line's words (`markdown=True`: escaped for a table cell)."""
    if kind == "open":
        return "connection open"
    if kind == "step":
        return f"step {_code(str(payload), markdown)}"
    if kind in ("send", "recv", "drop"):
        verb = {"send": "sends", "recv": "receives", "drop": "drops (closing)"}[kind]
        return f"{verb} {_code(short(payload), markdown)}"
    if kind == "await":
        return f"awaits {_code(str(payload), markdown)}"
    if kind == "resume":
        return f"resumes with {_code(short(payload), markdown)}"
    if kind == "cancel":
        return f"cancels await {payload}"
    if kind == "lost":
        return f"loses {_code(short(payload), markdown)} (transport dropped)"
    if kind == "detach":
        return "detached (transport lost)"
    if kind == "resumed":
        return f"resumed, replaying {payload}"
    if kind == "replay":
        return f"replays {_code(short(payload), markdown)}"
    if kind == "failed":
        detail = _plain(f"{type(payload).__name__}: {payload}", markdown)
        failed = "**failed**" if markdown else "FAILED"
        return f"{failed} in {_code(step, markdown)}: {detail}"
    if kind == "complete":
        return f"flow complete after {_code(str(payload), markdown)}"
    if kind in ("close", "closed"):
        code, reason = pair_of(payload)
        verb = "closes" if kind == "close" else "closed"
        return f"{verb} {code}" + (f" {_plain(repr(reason), markdown)}" if reason else "")
    if kind == "stall":
        return f"stalled, waiting in {_code(str(payload), markdown)}"
    if kind == "limit":
        return f"stopped: {_plain(str(payload), markdown)}"
    if kind == "action":
        return f"application: {_code(short(payload), markdown)}"
    return _plain(f"{kind} {payload!r}", markdown)


# -- whole transcripts -----------------------------------------------------------


def pair_table(entries: Iterable[Entry], kinds: Iterable[str] | None) -> str:
    """The two-column "| Server | Client |" table, one row per entry shown."""
    shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
    lines = ["| Server | Client |", "|------|------|"]
    for entry in entries:
        if entry.kind not in shown:
            continue
        cell = entry.describe(markdown=True)
        lines.append(f"| {cell} | |" if entry.side == SERVER else f"| | {cell} |")
    return "\n".join(lines)


def room_table(
    entries: Iterable[RoomEntry], names: Sequence[str], kinds: Iterable[str] | None
) -> str:
    """A Server column (each cell names the client's connection it is about) and one
    column per client in `names`."""
    shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
    columns = ["Server", *names]
    lines = ["| " + " | ".join(columns) + " |", "|" + "------|" * len(columns)]
    for entry in entries:
        if entry.kind not in shown:
            continue
        cells = [""] * len(columns)
        text = entry.describe(markdown=True)
        if entry.side == SERVER:
            cells[0] = f"[{entry.client}] {text}"
        else:
            cells[1 + names.index(entry.client)] = text
        lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    return "\n".join(lines)


def pair_mermaid(entries: Iterable[Entry], kinds: Iterable[str] | None) -> str:
    """A Mermaid sequenceDiagram: messages as arrows, everything else as notes."""
    shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
    ids = {SERVER: "S", CLIENT: "C"}
    lines = ["sequenceDiagram", "    participant S as Server", "    participant C as Client"]
    for entry in entries:
        if entry.kind not in shown:
            continue
        me = ids[entry.side]
        peer = ids[other_side(entry.side)]
        text = _mermaid_text(entry.describe(markdown=False))
        if entry.kind == "send":
            lines.append(f"    {me}->>{peer}: {_mermaid_text(short(entry.payload))}")
        elif entry.kind == "close":
            lines.append(f"    {me}--){peer}: {text}")
        elif entry.kind in ("stall", "limit"):
            lines.append(f"    Note over S,C: {entry.side} {text}")
        else:
            lines.append(f"    Note over {me}: {text}")
    return "\n".join(lines)


_MERMAID_ESCAPES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", "\n": " ", "\r": " "}


def _mermaid_text(text: str) -> str:
    """Escape what would end or confuse a Mermaid message or note."""
    return "".join(_MERMAID_ESCAPES.get(char, char) for char in text)
