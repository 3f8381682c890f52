"""`run_pair` and `arun_pair`: a server flow against a client flow, in memory, on
the fake clock, with `drops=` for resume (re-exported by `socker_core.testing`)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._events import Event
from ._flow import Close, Flow
from ._resume import ReplayBuffer
from ._stepper import DEFAULT_MAX_QUEUE, Stepper
from ._testing_render import (
    CLIENT,
    SERVER,
    Entry,
    Side,
    other_side,
    pair_mermaid,
    pair_of,
    pair_table,
)
from ._testing_sim import (
    DEFAULT_MAX_AWAIT_STEPS,
    DEFAULT_MAX_EVENTS,
    PRIORITY_NET,
    Simulation,
    adrive,
    check_delays,
    check_max_events,
    drive,
)

#: A scripted application action for `run_pair(actions=[(time, side, action)])`:
#: bytes are sent with `Stepper.send`, a `Close` closes with `Stepper.close`, a
#: callable is called as `action(stepper, now)` and returns the events it made.
Action = bytes | Close | Callable[[Stepper, float], Iterable[Event] | None]


class Transcript(list[Entry]):
    """Everything that happened in a `run_pair` run, in order, on both sides.

    `outcome` is "closed" (both sides ended), "stalled" (both sides were left
    waiting with nothing in flight), "limit" (max_events reached) or
    "time limit" (max_time reached).
    """

    def __init__(self, server: Stepper, client: Stepper) -> None:
        super().__init__()
        self.server = server
        self.client = client
        self.outcome = "running"

    def stepper(self, side: Side) -> Stepper:
        """The Stepper of `side` ("server" or "client")."""
        return self.server if side == SERVER else self.client

    # -- queries -------------------------------------------------------------

    def entries(self, side: Side | None = None, kind: str | None = None) -> list[Entry]:
        """The entries of `side` (both when None) and `kind` (all when None)."""
        return [
            e for e in self if (side is None or e.side == side) and (kind is None or e.kind == kind)
        ]

    def sent(self, side: Side) -> list[bytes]:
        """The messages `side` sent, in order."""
        return [e.payload for e in self.entries(side, "send") if isinstance(e.payload, bytes)]

    def received(self, side: Side) -> list[bytes]:
        """The messages `side` received, in order."""
        return [e.payload for e in self.entries(side, "recv") if isinstance(e.payload, bytes)]

    def steps(self, side: Side) -> list[str]:
        """The steps `side` entered, in order."""
        return [str(e.payload) for e in self.entries(side, "step")]

    def failures(self, side: Side | None = None) -> list[BaseException]:
        """The exceptions handlers raised on `side` (both when None)."""
        return [
            e.payload for e in self.entries(side, "failed") if isinstance(e.payload, BaseException)
        ]

    def close_of(self, side: Side) -> tuple[int, str] | None:
        """(code, reason) the side's connection ended with, or None if it did not end."""
        for entry in self.entries(side, "closed"):
            code, reason = pair_of(entry.payload)
            return int(code), str(reason)
        return None

    @property
    def server_code(self) -> int | None:
        """The server's close code, or None if it did not close."""
        close = self.close_of(SERVER)
        return None if close is None else close[0]

    @property
    def client_code(self) -> int | None:
        """The client's close code, or None if it did not close."""
        close = self.close_of(CLIENT)
        return None if close is None else close[0]

    @property
    def closed(self) -> bool:
        """True when both sides ended."""
        return self.outcome == "closed"

    @property
    def stalled(self) -> bool:
        """True when both sides were left waiting for a message."""
        return self.outcome == "stalled"

    # -- rendering -----------------------------------------------------------

    def log(self) -> str:
        """Every entry, one per line, with its time."""
        return "\n".join(str(e) for e in self)

    def table(self, kinds: Iterable[str] | None = None) -> str:
        """A two-column Markdown table, one row per entry, like the original README's."""
        return pair_table(self, kinds)

    def mermaid(self, kinds: Iterable[str] | None = None) -> str:
        """A Mermaid sequenceDiagram: messages as arrows, everything else as notes."""
        return pair_mermaid(self, kinds)

    def __str__(self) -> str:
        return self.log()

    def __repr__(self) -> str:
        return (
            f"<Transcript {self.outcome} entries={len(self)} "
            f"server={self.close_of(SERVER)} client={self.close_of(CLIENT)}>"
        )


class _Pair(Simulation[Side, Transcript]):
    """The simulation shared by run_pair and arun_pair: two endpoints, "server" and
    "client", both opened at the start (server first), and the drops of `drops=`.

    `run()` is a generator: it yields each awaitable that needs resolving and is
    sent back (ok, value); the sync and async front ends differ only there.
    """

    def __init__(
        self,
        server_flow: Flow,
        client_flow: Flow,
        *,
        clock_start: float,
        latency: float,
        await_delay: float,
        max_events: int,
        max_time: float | None,
        max_queue: int,
        actions: Sequence[tuple[float, Side, Action]],
        drops: Sequence[tuple[float, float]] = (),
    ) -> None:
        check_delays(latency=latency, await_delay=await_delay)
        check_max_events(max_events)
        if max_time is not None and not max_time >= 0:
            raise ValueError(f"max_time must be >= 0, got {max_time!r}")
        resumable = server_flow.resume_window is not None
        if drops and not resumable:
            raise ValueError("drops= needs a server flow with resume_window set")
        steppers: dict[Side, Stepper] = {
            side: Stepper(
                flow,
                max_queue=max_queue,
                replay=ReplayBuffer(flow.max_resume_buffer) if resumable else None,
            )
            for side, flow in ((SERVER, server_flow), (CLIENT, client_flow))
        }
        super().__init__(
            steppers,
            Transcript(steppers[SERVER], steppers[CLIENT]),
            clock_start=clock_start,
            latency=latency,
            await_delay=await_delay,
            max_events=max_events,
            max_time=max_time,
        )
        self.window = server_flow.resume_window or 0.0
        for when, side, action in actions:
            if side not in (SERVER, CLIENT):
                raise ValueError(f"action side must be 'server' or 'client', got {side!r}")
            self._push(float(when), PRIORITY_NET, ("action", side, action))
        for dropped, resumed in drops:
            if not resumed >= dropped:
                raise ValueError(f"a drop resumes before it happens: {(dropped, resumed)!r}")
            self._push(float(dropped), PRIORITY_NET, ("drop", SERVER))
            self._push(float(resumed), PRIORITY_NET, ("resume", SERVER))

    def _peer(self, key: Side) -> Side:
        return other_side(key)

    def _record(self, key: Side, kind: str, payload: object, step: str | None = None) -> None:
        if step is None:
            step = self.steppers[key].step
        self.transcript.append(Entry(key, kind, payload, self.now, step))

    def _stop(self, outcome: str, why: str) -> None:
        self.transcript.outcome = outcome
        self._record(SERVER, "limit", why)

    def _start(self) -> None:
        for side in (SERVER, CLIENT):
            self._open(side)

    def _handle(self, item: tuple[Any, ...]) -> None:
        if item[0] == "drop":
            self._drop()
        elif item[0] == "resume":
            self._resume()
        else:
            super()._handle(item)

    def _drop(self) -> None:
        """The transport is lost: what is in flight is gone; both sides detach."""
        kept = []
        for entry in self._heap:
            item = entry[3]
            if item[0] == "msg":
                self._record(item[1], "lost", bytes(item[2]))
            elif item[0] != "eof":  # a close in flight is lost too (resent on resume)
                kept.append(entry)
        heapq.heapify(kept)
        self._heap = kept
        for side in (SERVER, CLIENT):
            inbox = self._inbox[side]
            for item in inbox:
                if item[0] == "msg":
                    self._record(side, "lost", bytes(item[2]))
            self._inbox[side] = deque()
            stepper = self.steppers[side]
            if stepper.is_closed:
                continue
            self._record(side, "detach", None)
            self._process(side, stepper.detach(self.now, self.window))

    def _resume(self) -> None:
        """A new transport: each side replays what the other has not received."""
        steppers = self.steppers
        if not all(steppers[side].is_detached for side in (SERVER, CLIENT)):
            for side in (SERVER, CLIENT):  # one side's session is over: so is the other's
                stepper = steppers[side]
                if stepper.is_detached:
                    self._process(side, stepper.close(1000, "peer session ended", self.now))
            return
        replays = {}
        for side in (SERVER, CLIENT):
            mine, theirs = steppers[side].replay, steppers[other_side(side)].replay
            assert mine is not None and theirs is not None
            replays[side] = mine.replay_after(theirs.received)
        if replays[SERVER] is None or replays[CLIENT] is None:
            for side in (SERVER, CLIENT):
                self._process(
                    side,
                    steppers[side].close(4413, "replay buffer overflowed", self.now),
                )
            return
        for side in (SERVER, CLIENT):
            self._record(side, "resumed", len(replays[side] or ()))
            for message in replays[side] or ():
                self._record(side, "replay", message)
                self._push(
                    self.now + self.latency, PRIORITY_NET, ("msg", other_side(side), message)
                )
            self._process(side, steppers[side].attach(self.now))
            self._process(side, steppers[side].pending_events())


def run_pair(
    server_flow: Flow,
    client_flow: Flow,
    *,
    clock_start: float = 0.0,
    max_events: int = DEFAULT_MAX_EVENTS,
    latency: float = 0.0,
    await_delay: float = 0.0,
    max_time: float | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    actions: Sequence[tuple[float, Side, Action]] = (),
    drops: Sequence[tuple[float, float]] = (),
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> Transcript:
    """Run a server flow and a client flow against each other in memory.

    Both Steppers open at `clock_start` (server first). Each `Send` reaches the
    peer's `receive` `latency` seconds later; a `CloseRequested` reaches the
    peer's `transport_closed` after `latency` and its own after `2 * latency`
    (the close handshake). Step timeouts fire on the fake clock. An async
    handler's awaitable finishes `await_delay` simulated seconds after it
    started; it is driven without an event loop, so it must not really wait
    (NeedsEventLoopError otherwise: use `arun_pair`). Messages that arrive
    while a side's queue is full wait (the side's `accepting` is respected).

    `actions` are application calls at given times: `(2.0, "server", Close(1001))`.

    `drops` simulates resume (the server flow needs `resume_window`): each
    `(drop_at, resume_at)` loses every message in flight at `drop_at` ("lost"
    entries), detaches both sides, and at `resume_at` each side replays what the
    other has not received ("replay" entries) and both attach again. A
    `resume_at` past the window finds the sessions ended.

    The run ends when both sides are closed ("closed"), when both wait with
    nothing in flight ("stalled"), or at `max_events` / `max_time`.
    """
    pair = _Pair(
        server_flow,
        client_flow,
        clock_start=clock_start,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        actions=actions,
        drops=drops,
    )
    return drive(pair.run(), max_await_steps, "run_pair")


async def arun_pair(
    server_flow: Flow,
    client_flow: Flow,
    *,
    clock_start: float = 0.0,
    max_events: int = DEFAULT_MAX_EVENTS,
    latency: float = 0.0,
    await_delay: float = 0.0,
    max_time: float | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    actions: Sequence[tuple[float, Side, Action]] = (),
    drops: Sequence[tuple[float, float]] = (),
) -> Transcript:
    """`run_pair` for handlers that really wait: each awaitable is awaited on the
    running event loop (asyncio or trio), one at a time. The clock stays fake."""
    pair = _Pair(
        server_flow,
        client_flow,
        clock_start=clock_start,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        actions=actions,
        drops=drops,
    )
    return await adrive(pair.run())
