"""`run_room`: one server flow against several client flows, in memory, on the fake
clock, with rooms and broadcast working (re-exported by `socker_core.testing`).

Each client gets its own server-side Stepper, as a real server gives every
connection one; all of them share one `Registry`, which is what `conn.server` is in
the server's handlers. A broadcast lands in each recipient's outbox (the embedded
delivery), and the run collects it at once, so it reaches the clients `latency`
seconds later like any other send. The transcript says which client each line
belongs to, on the server's side as on the client's.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._events import (
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    Event,
    FlowCompleted,
    HandlerFailed,
    Send,
    StepChanged,
)
from ._flow import Close, Flow
from ._rooms import Registry
from ._state import State
from ._stepper import DEFAULT_MAX_QUEUE, ON_CLOSE, Stepper
from .testing import (
    CLIENT,
    DEFAULT_MAX_AWAIT_STEPS,
    DEFAULT_MAX_EVENTS,
    SERVER,
    SUMMARY_KINDS,
    Entry,
    Side,
    _describe,
    _discard,
    _pair_of,
    _trampoline,
)

#: A scripted action for `run_room(actions=[(time, target, action)])`. Target
#: "server": `action(registry, now)` (a broadcast from outside any handler, say).
#: Target a client's name: bytes are sent by that client, a `Close` closes it, a
#: callable is called as `action(stepper, now)`. Target "server:NAME": the same, on
#: the server's connection for client NAME.
RoomAction = bytes | Close | Callable[..., Iterable[Event] | None]

_PRIORITY_AWAIT = 0
_PRIORITY_NET = 1


@dataclass(frozen=True, slots=True)
class RoomEntry:
    """One line of a RoomTranscript: `client` names the connection it belongs to and
    `side` says whether it happened on the server's end of it or the client's. The
    kinds are those of `testing.Entry`."""

    client: str
    side: Side
    kind: str
    payload: object
    time: float
    step: str = ""

    def describe(self, markdown: bool = False) -> str:
        """This line as the two-sided transcript words it (`Entry.describe`)."""
        return _describe(Entry(self.side, self.kind, self.payload, self.time, self.step), markdown)

    def __str__(self) -> str:
        where = f"{self.side} [{self.client}]" if self.side == SERVER else self.client
        return f"{self.time:10.4f}  {where:<20}  {self.describe()}"


class RoomTranscript(list[RoomEntry]):
    """Everything that happened in a `run_room` run, in order, on every connection.

    `outcome` is "closed", "stalled", "limit" or "time limit" (as for run_pair).
    `registry` is the rooms registry the server's connections shared; `servers`
    and `clients` map each client's name to the server's Stepper and its own."""

    def __init__(self, names: Sequence[str], registry: Registry) -> None:
        super().__init__()
        self.names = tuple(names)
        self.registry = registry
        self.servers: dict[str, Stepper] = {}
        self.clients: dict[str, Stepper] = {}
        self.outcome = "running"

    def entries(
        self, client: str | None = None, side: Side | None = None, kind: str | None = None
    ) -> list[RoomEntry]:
        """The entries of one client (or all), one side (or both), one kind (or all)."""
        return [
            e
            for e in self
            if (client is None or e.client == client)
            and (side is None or e.side == side)
            and (kind is None or e.kind == kind)
        ]

    def received(self, client: str, side: Side = CLIENT) -> list[bytes]:
        """The messages `client` received (side="server": the server got from it)."""
        return [
            e.payload for e in self.entries(client, side, "recv") if isinstance(e.payload, bytes)
        ]

    def sent(self, client: str, side: Side = CLIENT) -> list[bytes]:
        """The messages `side` of `client`'s connection sent, in order."""
        return [
            e.payload for e in self.entries(client, side, "send") if isinstance(e.payload, bytes)
        ]

    def steps(self, client: str, side: Side = CLIENT) -> list[str]:
        """The steps `side` of `client`'s connection entered, in order."""
        return [str(e.payload) for e in self.entries(client, side, "step")]

    def failures(self) -> list[BaseException]:
        """Every exception a handler or hook raised, on any connection."""
        return [
            e.payload for e in self.entries(kind="failed") if isinstance(e.payload, BaseException)
        ]

    def close_of(self, client: str, side: Side = CLIENT) -> tuple[int, str] | None:
        """(code, reason) `side` of `client`'s connection closed with, or None."""
        for entry in self.entries(client, side, "closed"):
            code, reason = _pair_of(entry.payload)
            return int(code), str(reason)
        return None

    @property
    def closed(self) -> bool:
        """True when the run ended with every connection closed."""
        return self.outcome == "closed"

    def log(self) -> str:
        """The whole transcript, one line per entry."""
        return "\n".join(str(e) for e in self)

    def table(self, kinds: Iterable[str] | None = None) -> str:
        """A Markdown table: a Server column (each cell names the client's connection
        it is about) and one column per client."""
        shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
        columns = ["Server", *self.names]
        lines = ["| " + " | ".join(columns) + " |", "|" + "------|" * len(columns)]
        for entry in self:
            if entry.kind not in shown:
                continue
            cells = [""] * len(columns)
            text = entry.describe(markdown=True)
            if entry.side == SERVER:
                cells[0] = f"[{entry.client}] {text}"
            else:
                cells[1 + self.names.index(entry.client)] = text
            lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.log()

    def __repr__(self) -> str:
        return f"<RoomTranscript {self.outcome} clients={len(self.names)} entries={len(self)}>"


class _Room:
    """The simulation behind run_room (sync handlers; awaitables that finish without
    really waiting are run by the trampoline, as in run_pair)."""

    def __init__(
        self,
        server_flow: Flow,
        clients: Mapping[str, Flow],
        *,
        clock_start: float,
        stagger: float,
        latency: float,
        await_delay: float,
        max_events: int,
        max_time: float | None,
        max_queue: int,
        max_await_steps: int,
        actions: Sequence[tuple[float, str, RoomAction]],
    ) -> None:
        for label, value in (
            ("latency", latency),
            ("await_delay", await_delay),
            ("stagger", stagger),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if not clients:
            raise ValueError("run_room needs at least one client")
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        names = list(clients)
        for name in names:
            if not isinstance(name, str) or not name or name == SERVER or ":" in name:
                raise ValueError(f"client names are non-empty strings without ':', got {name!r}")
        self.registry = Registry()
        self.transcript = RoomTranscript(names, self.registry)
        self.steppers: dict[tuple[str, Side], Stepper] = {}
        for name in names:
            server = Stepper(server_flow, max_queue=max_queue, id=name, registry=self.registry)
            client = Stepper(clients[name], max_queue=max_queue, id=f"{name}-client")
            self.steppers[(name, SERVER)] = server
            self.steppers[(name, CLIENT)] = client
            self.transcript.servers[name] = server
            self.transcript.clients[name] = client
            for side, stepper in ((SERVER, server), (CLIENT, client)):
                stepper.wakeup = lambda key=(name, side): self._dirty.append(key)
        self.now = clock_start
        self.end = math.inf if max_time is None else clock_start + max_time
        self.latency = latency
        self.await_delay = await_delay
        self.max_events = max_events
        self.max_await_steps = max_await_steps
        self.count = 0
        self._seq = 0
        self._heap: list[tuple[float, int, int, tuple[Any, ...]]] = []
        self._inbox: dict[tuple[str, Side], deque[tuple[Any, ...]]] = {
            key: deque() for key in self.steppers
        }
        self._dirty: list[tuple[str, Side]] = []
        self._scheduled: dict[tuple[str, Side, int], Any] = {}
        self._cancelled: set[tuple[str, Side, int]] = set()
        for index, name in enumerate(names):
            self._push(clock_start + index * stagger, _PRIORITY_NET, ("connect", name))
        for when, target, action in actions:
            prefix, _, name = target.partition(":") if ":" in target else ("", "", target)
            if target != SERVER and (name not in clients or prefix not in ("", SERVER)):
                raise ValueError(
                    f"action target must be 'server', a client or 'server:NAME', got {target!r}"
                )
            self._push(float(when), _PRIORITY_NET, ("action", target, action))

    def _push(self, when: float, priority: int, item: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, priority, self._seq, item))

    def _record(
        self, key: tuple[str, Side], kind: str, payload: object, step: str | None = None
    ) -> None:
        name, side = key
        if step is None:
            step = self.steppers[key].step
        self.transcript.append(RoomEntry(name, side, kind, payload, self.now, step))

    def _process(self, key: tuple[str, Side], events: Iterable[Event]) -> None:
        name, side = key
        other = (name, CLIENT if side == SERVER else SERVER)
        now = self.now
        for event in events:
            self.count += 1
            if isinstance(event, Send):
                data = event.data
                self._record(key, "send", data if isinstance(data, str) else bytes(data))
                self._push(now + self.latency, _PRIORITY_NET, ("msg", other, event.data))
            elif isinstance(event, StepChanged):
                self._record(key, "step", event.to_step, event.to_step)
            elif isinstance(event, Await):
                self._record(key, "await", event.step)
                delay = 0.0 if event.step == ON_CLOSE else self.await_delay
                self._scheduled[(name, side, event.token)] = event.awaitable
                self._push(
                    now + delay,
                    _PRIORITY_AWAIT,
                    ("await", key, event.token, event.awaitable, event.step),
                )
            elif isinstance(event, CancelAwait):
                self._record(key, "cancel", event.token)
                self._cancelled.add((name, side, event.token))
            elif isinstance(event, HandlerFailed):
                self._record(key, "failed", event.exception, event.step)
            elif isinstance(event, FlowCompleted):
                self._record(key, "complete", event.last_step)
            elif isinstance(event, CloseRequested):
                self._record(key, "close", (event.code, event.reason))
                eof = (event.code, event.reason)
                self._push(now + self.latency, _PRIORITY_NET, ("eof", other, *eof))
                self._push(now + 2 * self.latency, _PRIORITY_NET, ("eof", key, *eof))
            elif isinstance(event, Closed):
                self._record(key, "closed", (event.code, event.reason))
        self._collect()

    def _collect(self) -> None:
        """What landed in outboxes meanwhile (broadcasts to other connections)."""
        while self._dirty:
            key = self._dirty.pop(0)
            self._process(key, self.steppers[key].pending_events())

    def _pump(self, key: tuple[str, Side]) -> None:
        stepper = self.steppers[key]
        inbox = self._inbox[key]
        while inbox:
            item = inbox[0]
            if item[0] == "msg":
                if stepper.is_closed or stepper.phase is State.CLOSING:
                    inbox.popleft()
                    self._record(key, "drop", bytes(item[2]))
                    if not stepper.is_closed:
                        self._process(key, stepper.receive(item[2], self.now))
                    continue
                if not stepper.accepting:
                    return
                inbox.popleft()
                self._record(key, "recv", bytes(item[2]))
                self._process(key, stepper.receive(item[2], self.now))
            else:
                inbox.popleft()
                if stepper.phase is State.IDLE:
                    continue  # never opened
                self._process(key, stepper.transport_closed(item[2], item[3], self.now))

    def _act(self, target: str, action: RoomAction) -> None:
        if target == SERVER:
            if not callable(action):
                raise TypeError(f"a 'server' action is a callable(registry, now), got {action!r}")
            self.transcript.append(RoomEntry("*", SERVER, "action", action, self.now, ""))
            action(self.registry, self.now)
            self._collect()
            return
        side: Side = SERVER if target.startswith(SERVER + ":") else CLIENT
        key = (target.partition(":")[2] if side == SERVER else target, side)
        stepper = self.steppers[key]
        self._record(key, "action", action)
        if isinstance(action, (bytes, bytearray, memoryview)):
            events: Iterable[Event] = stepper.send(bytes(action), self.now)
        elif isinstance(action, Close):
            events = stepper.close(action.code, action.reason, self.now)
        elif callable(action):
            events = action(stepper, self.now) or []
        else:
            raise TypeError(f"unsupported action {action!r}: use bytes, Close or a callable")
        self._process(key, events)
        self._process(key, stepper.pending_events())

    def _settle(self, key: tuple[str, Side], token: int, awaitable: Any, step: str) -> None:
        name, side = key
        scheduled = (name, side, token)
        self._scheduled.pop(scheduled, None)
        if scheduled in self._cancelled:
            _discard(awaitable)
            return
        ok, value = _trampoline(awaitable, self.max_await_steps, "run_room")
        stepper = self.steppers[key]
        self._process(key, stepper.pending_events())
        self._record(key, "resume", value, step)
        if step == ON_CLOSE:
            if not ok:
                self._record(key, "failed", value, step)
            return
        if ok:
            events = stepper.resume(token, value, self.now)
        else:
            assert isinstance(value, BaseException)
            events = stepper.resume_error(token, value, self.now)
        self._process(key, events)
        self._process(key, stepper.pending_events())

    def _next_deadline(self) -> tuple[float, tuple[str, Side]] | None:
        best: tuple[float, tuple[str, Side]] | None = None
        for key, stepper in self.steppers.items():
            deadline = stepper.next_deadline
            if (
                deadline is not None
                and math.isfinite(deadline)
                and (best is None or deadline < best[0])
            ):
                best = (deadline, key)
        return best

    def run(self) -> RoomTranscript:
        rounds = 0
        try:
            while True:
                rounds += 1
                if self.count >= self.max_events or rounds > 4 * self.max_events + 100:
                    self._stop("limit", f"max_events={self.max_events} reached")
                    break
                item_time = self._heap[0][0] if self._heap else math.inf
                deadline = self._next_deadline()
                if deadline is not None and deadline[0] <= item_time:
                    when, key = deadline
                    if when > self.end:
                        self._stop("time limit", f"max_time reached at {self.end:g}")
                        break
                    self.now = max(self.now, when)
                    self._process(key, self.steppers[key].tick(self.now))
                elif not self._heap:
                    break
                elif item_time > self.end:
                    self._stop("time limit", f"max_time reached at {self.end:g}")
                    break
                else:
                    when, _, _, item = heapq.heappop(self._heap)
                    self.now = max(self.now, when)
                    kind = item[0]
                    if kind == "connect":
                        for side in (SERVER, CLIENT):
                            key = (item[1], side)
                            self._record(key, "open", None)
                            self._process(key, self.steppers[key].open(self.now))
                    elif kind in ("msg", "eof"):
                        self._inbox[item[1]].append(item)
                    elif kind == "action":
                        self._act(item[1], item[2])
                    else:
                        self._settle(item[1], item[2], item[3], item[4])
                for key in self.steppers:
                    self._pump(key)
        finally:
            for awaitable in self._scheduled.values():
                _discard(awaitable)
            self._scheduled.clear()
        transcript = self.transcript
        if transcript.outcome == "running":
            if all(s.is_closed for s in self.steppers.values()):
                transcript.outcome = "closed"
            else:
                transcript.outcome = "stalled"
                for key, stepper in self.steppers.items():
                    if not stepper.is_closed and stepper.phase is not State.IDLE:
                        self._record(key, "stall", stepper.step)
        return transcript

    def _stop(self, outcome: str, why: str) -> None:
        self.transcript.outcome = outcome
        self.transcript.append(RoomEntry("*", SERVER, "limit", why, self.now, ""))


def run_room(
    server_flow: Flow,
    clients: Mapping[str, Flow] | Sequence[Flow],
    *,
    clock_start: float = 0.0,
    stagger: float = 0.0,
    latency: float = 0.0,
    await_delay: float = 0.0,
    max_events: int = DEFAULT_MAX_EVENTS,
    max_time: float | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    actions: Sequence[tuple[float, str, RoomAction]] = (),
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> RoomTranscript:
    """Run one server flow against several clients in memory, rooms and broadcast
    included.

    `clients` maps a name to each client's flow (a sequence is named "client1",
    "client2", ...). Client number i (from 0) connects at `clock_start + i *
    stagger`: the server's connection for it opens first (its id is the client's
    name, so `registry.get("alice")` finds it), then the client's. Everything else
    is as in `run_pair`: `latency`, step timeouts on the fake clock, awaitables
    that must finish without really waiting, and the same end conditions.

    `actions` are `(time, target, action)`; target "server" calls
    `action(registry, now)` (a broadcast from outside any handler), a client's name
    or "server:NAME" act on that connection (bytes, `Close`, or a callable).
    """
    named = (
        dict(clients)
        if isinstance(clients, Mapping)
        else {f"client{index + 1}": flow for index, flow in enumerate(clients)}
    )
    return _Room(
        server_flow,
        named,
        clock_start=clock_start,
        stagger=stagger,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        max_await_steps=max_await_steps,
        actions=actions,
    ).run()
