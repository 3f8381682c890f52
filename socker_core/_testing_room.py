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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._events import Event
from ._flow import Close, Flow
from ._rooms import Registry
from ._stepper import DEFAULT_MAX_QUEUE, Stepper
from ._testing_render import CLIENT, SERVER, Side, describe, other_side, pair_of, room_table
from ._testing_sim import (
    DEFAULT_MAX_AWAIT_STEPS,
    DEFAULT_MAX_EVENTS,
    PRIORITY_NET,
    Simulation,
    check_delays,
    check_max_events,
    drive,
)

#: A scripted action for `run_room(actions=[(time, target, action)])`. Target
#: "server": `action(registry, now)` (a broadcast from outside any handler, say).
#: Target a client's name: bytes are sent by that client, a `Close` closes it, a
#: callable is called as `action(stepper, now)`. Target "server:NAME": the same, on
#: the server's connection for client NAME.
RoomAction = bytes | Close | Callable[..., Iterable[Event] | None]

#: An endpoint of a room run: (client name, side of that client's connection).
_Key = tuple[str, Side]


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
        return describe(self.kind, self.payload, self.step, markdown)

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
            code, reason = pair_of(entry.payload)
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
        return room_table(self, self.names, kinds)

    def __str__(self) -> str:
        return self.log()

    def __repr__(self) -> str:
        return f"<RoomTranscript {self.outcome} clients={len(self.names)} entries={len(self)}>"


class _Room(Simulation[_Key, RoomTranscript]):
    """The simulation behind run_room: an endpoint per side of each client's
    connection, every connection opened at its client's turn ("connect"), and the
    broadcasts the shared Registry drops in other connections' outboxes collected
    as they happen (each Stepper's `wakeup`)."""

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
        actions: Sequence[tuple[float, str, RoomAction]],
    ) -> None:
        check_delays(latency=latency, await_delay=await_delay, stagger=stagger)
        if not clients:
            raise ValueError("run_room needs at least one client")
        check_max_events(max_events)
        names = list(clients)
        for name in names:
            if not isinstance(name, str) or not name or name == SERVER or ":" in name:
                raise ValueError(f"client names are non-empty strings without ':', got {name!r}")
        self.registry = Registry()
        transcript = RoomTranscript(names, self.registry)
        steppers: dict[_Key, Stepper] = {}
        for name in names:
            server = Stepper(server_flow, max_queue=max_queue, id=name, registry=self.registry)
            client = Stepper(clients[name], max_queue=max_queue, id=f"{name}-client")
            steppers[(name, SERVER)] = server
            steppers[(name, CLIENT)] = client
            transcript.servers[name] = server
            transcript.clients[name] = client
            for side, stepper in ((SERVER, server), (CLIENT, client)):
                stepper.wakeup = lambda key=(name, side): self._dirty.append(key)
        super().__init__(
            steppers,
            transcript,
            clock_start=clock_start,
            latency=latency,
            await_delay=await_delay,
            max_events=max_events,
            max_time=max_time,
        )
        for index, name in enumerate(names):
            self._push(clock_start + index * stagger, PRIORITY_NET, ("connect", name))
        for when, target, action in actions:
            prefix, _, name = target.partition(":") if ":" in target else ("", "", target)
            if target != SERVER and (name not in clients or prefix not in ("", SERVER)):
                raise ValueError(
                    f"action target must be 'server', a client or 'server:NAME', got {target!r}"
                )
            self._push(float(when), PRIORITY_NET, ("action", target, action))

    def _peer(self, key: _Key) -> _Key:
        name, side = key
        return (name, other_side(side))

    def _record(self, key: _Key, kind: str, payload: object, step: str | None = None) -> None:
        name, side = key
        if step is None:
            step = self.steppers[key].step
        self.transcript.append(RoomEntry(name, side, kind, payload, self.now, step))

    def _stop(self, outcome: str, why: str) -> None:
        self.transcript.outcome = outcome
        self.transcript.append(RoomEntry("*", SERVER, "limit", why, self.now, ""))

    def _handle(self, item: tuple[Any, ...]) -> None:
        if item[0] == "connect":
            for side in (SERVER, CLIENT):
                self._open((item[1], side))
        else:
            super()._handle(item)

    def _act(self, target: str, action: RoomAction) -> None:
        if target == SERVER:
            if not callable(action):
                raise TypeError(f"a 'server' action is a callable(registry, now), got {action!r}")
            self.transcript.append(RoomEntry("*", SERVER, "action", action, self.now, ""))
            action(self.registry, self.now)
            self._collect()
            return
        side: Side = SERVER if target.startswith(SERVER + ":") else CLIENT
        self._apply((target.partition(":")[2] if side == SERVER else target, side), action)


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
    room = _Room(
        server_flow,
        named,
        clock_start=clock_start,
        stagger=stagger,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        actions=actions,
    )
    return drive(room.run(), max_await_steps, "run_room")
