"""A test kit for socker flows: in-memory pairs, transcripts and a fuzzer.

Standard library only (hypothesis is imported lazily by `fuzz_flow`), no
sockets, no event loop, no real clock:

- `run_pair(server_flow, client_flow)` runs a server Stepper and a client
  Stepper against each other on a fake clock and returns a `Transcript` of
  every message, step change and close on both sides. Async handlers work when
  their awaitables finish without suspending on a real event loop;
  `await arun_pair(...)` awaits them for real under any event loop (asyncio or
  trio).
- `Transcript.table()` renders the two-column "| Server | Client |" table of
  the original README; `Transcript.mermaid()` renders a Mermaid sequence
  diagram.
- `fuzz_flow(flow)` feeds random and adversarial message sequences, clock
  jumps, ticks and closes to fresh Steppers and checks the invariants every
  flow must keep.
- `run_room(server_flow, {"ann": flow, "bob": flow})` runs one server flow
  against several clients, with rooms and broadcast (one `Registry` shared by
  the server's connections); its `RoomTranscript` names the client of every
  line, and `table()` has a column per client.
"""

from __future__ import annotations

# isort: off
# In the order the API page (mkdocstrings, source order) has always listed them.
from ._testing_sim import NeedsEventLoopError
from ._testing_render import CLIENT, SERVER, Side, Entry
from ._testing_pair import Action, Transcript
from ._testing_fuzz import FuzzOp, FuzzStats, FuzzFailure
from ._testing_room import RoomAction, RoomEntry, RoomTranscript
from ._testing_sim import resolve
from ._testing_pair import run_pair, arun_pair
from ._testing_fuzz import replay_fuzz, fuzz_flow
from ._testing_room import run_room

# isort: on
from ._testing_render import SUMMARY_KINDS as SUMMARY_KINDS
from ._testing_sim import DEFAULT_MAX_AWAIT_STEPS as DEFAULT_MAX_AWAIT_STEPS
from ._testing_sim import DEFAULT_MAX_EVENTS as DEFAULT_MAX_EVENTS

# The kit's modules, one concept each: _testing_sim (the discrete-event simulation
# both run_pair and run_room use, and driving awaitables without an event loop),
# _testing_pair, _testing_room, _testing_fuzz and _testing_render (transcript lines
# and their tables). DEFAULT_MAX_* and SUMMARY_KINDS stay importable from here too.

__all__ = [
    "CLIENT",
    "SERVER",
    "Action",
    "Entry",
    "FuzzFailure",
    "FuzzOp",
    "FuzzStats",
    "NeedsEventLoopError",
    "RoomAction",
    "RoomEntry",
    "RoomTranscript",
    "Side",
    "Transcript",
    "arun_pair",
    "fuzz_flow",
    "replay_fuzz",
    "resolve",
    "run_pair",
    "run_room",
]
