"""The arena server: one socker flow per player, one match they all share.

A player's connection goes through these steps (see `protocol` for the bytes):

1. on open, the server sends the scene (``H`` welcome: arena size, tick rate, the
   connection's id);
2. ``introduce``: the player's ``N`` (name) message;
3. ``webrtc-offer`` / ``webrtc-connect`` (`socker_transports.webrtc`): the server
   offers an unordered, no-retransmit data channel; when it opens the player is
   put on the arena, joins the match room and everyone in it is told (``J``);
4. ``play``: chat (``C``) is broadcast to the room; ``Q`` completes the flow (1000).

While the match runs, `Match.run` advances the game at its fixed tick rate and
sends every player the world on its data channel; inputs come back on the same
channel. The flow is resumable (``Flow(name, resume_window=RESUME_WINDOW)``): a
dropped websocket detaches the player instead of ending it; the data channel and
the player's place on the arena stay, broadcasts to it are kept for replay, and
``on_resume`` runs when it is back at its step. ``on_close`` (the player leaves)
runs only when the session really ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from socker_core import Close, Connection, Flow, Result

from . import protocol
from .game import HEIGHT, TICK_RATE, WIDTH, Game, Player

PATH = "/arena"
MATCH = "match"  # the room every player of the match joins
RESUME_WINDOW = 30.0  # seconds a dropped player keeps its place (when resume exists)
Report = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Member:
    conn: Connection
    player: Player
    bot: bool
    channel: Any = None  # the RTCDataChannel
    states_sent: int = 0
    inputs: int = 0


class Match:
    """The shared game plus the connections playing it."""

    def __init__(
        self,
        *,
        seed: int = 0,
        tick_rate: int = TICK_RATE,
        report: Report | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.game = Game(seed=seed, tick_rate=tick_rate)
        self.members: dict[str, Member] = {}  # by conn.id
        self.report: Report = report or (lambda record: None)
        self.clock = clock
        self.ticks_sent = 0
        self.frames = 0  # worlds sent (the `frame` field)

    # -- telling the match -----------------------------------------------------------

    def tell(self, data: bytes, *, skip: Connection | None = None) -> None:
        """One reliable message to everyone in the match room (the websocket)."""
        any_conn = next(iter(m.conn for m in self.members.values()), skip)
        server = getattr(any_conn, "server", None)
        if server is not None and hasattr(server, "broadcast"):
            server.broadcast(data, room=MATCH, skip=skip)
            return
        for member in list(self.members.values()):  # no server (the unit tests' fakes)
            conn = member.conn
            # a detached connection keeps what is sent to it and replays it on resume
            if conn is not skip and (conn.is_open or conn.is_detached):
                conn.send(data)

    def _card(self, member: Member) -> dict[str, Any]:
        p = member.player
        return {"slot": p.slot, "id": p.id, "name": p.name, "bot": member.bot}

    # -- players ---------------------------------------------------------------------

    def enter(self, conn: Connection, name: str, bot: bool, channel: Any) -> Member:
        player = self.game.add_player(conn.id, name)
        member = Member(conn, player, bot, channel)
        roster = [self._card(m) for m in self.members.values()]
        conn.send(protocol.control(protocol.ROSTER, players=roster))
        self.members[conn.id] = member
        join = getattr(conn, "join", None)  # every server connection; not the tests' fakes
        if join is not None:
            join(MATCH)
        self.tell(protocol.control(protocol.JOINED, **self._card(member)))

        def on_input(message: object) -> None:
            try:
                seq, dx, dy = protocol.decode_input(message)  # type: ignore[arg-type]
            except (protocol.ProtocolError, TypeError):
                conn.close(1003, "the data channel carries arena inputs only")
                return
            member.inputs += 1
            self.game.steer(player.slot, seq, dx, dy)

        channel.on("message", on_input)
        self.report({"ev": "joined", **self._card(member)})
        return member

    def leave(self, conn: Connection) -> None:
        member = self.members.pop(conn.id, None)
        if member is None:
            return
        self.game.remove_player(member.player.slot)
        self.tell(protocol.control(protocol.LEFT, **self._card(member)), skip=conn)
        self.report(
            {
                "ev": "left",
                **self._card(member),
                "code": conn.close_code,
                "reason": conn.close_reason,
                "states_sent": member.states_sent,
                "inputs": member.inputs,
                "score": member.player.score,
            }
        )

    # -- the clock -------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the game to now; send each new world to every open data channel."""
        before = self.game.tick
        scored = self.game.advance(self.clock())
        if self.game.tick != before:
            self.frames += 1
            frame = protocol.encode_world(self.game.world(), self.frames)
            self.ticks_sent += self.game.tick - before
            for member in list(self.members.values()):
                channel = member.channel
                if channel is not None and channel.readyState == "open":
                    try:
                        channel.send(frame)
                        member.states_sent += 1
                    except Exception:  # a channel closing under us: the next tick skips it
                        pass
        for event in scored:
            self.tell(protocol.control(protocol.SCORE, slot=event.slot, score=event.score))

    async def run(self, *, every: float = 1.0) -> None:
        """Tick forever at the game's rate; report ticks and packets every `every` s."""
        mark, ticks, sent = self.clock(), self.ticks_sent, self._sent()
        while True:
            self.tick()
            now = self.clock()
            if now - mark >= every:
                current = self._sent()
                self.report(
                    {
                        "ev": "second",
                        "ticks": (self.ticks_sent - ticks) / (now - mark),
                        "players": len(self.members),
                        "states": {i: (current.get(i, 0) - sent.get(i, 0)) for i in current},
                    }
                )
                mark, ticks, sent = now, self.ticks_sent, current
            due = self.game.next_tick_at()
            await asyncio.sleep(max(0.0, (due or now) - self.clock()))

    def _sent(self) -> dict[str, int]:
        return {m.player.name: m.states_sent for m in self.members.values()}

    # -- the flow --------------------------------------------------------------------

    def flow(self, *, open_timeout: float = 10.0) -> Flow:
        """The server flow every player's connection runs."""
        from .. import webrtc

        flow = Flow("arena", resume_window=RESUME_WINDOW)

        @flow.on_open
        def welcome(conn: Connection) -> None:
            conn.send(
                protocol.control(
                    protocol.WELCOME,
                    id=conn.id,
                    arena=[WIDTH, HEIGHT],
                    tick_rate=self.game.tick_rate,
                )
            )

        @flow.add
        def introduce(conn: Connection, message: bytes) -> Result:
            try:
                tag, body = protocol.decode_control(message)
            except protocol.ProtocolError as exc:
                return Close(1003, str(exc))
            name = body.get("name")
            if tag != protocol.NAME or not isinstance(name, str) or not 0 < len(name) <= 24:
                return Close(1003, "the first message is N {name: 1-24 characters}")
            conn.state.arena = (name, bool(body.get("bot")))
            return True

        def on_channel(conn: Connection, channel: Any) -> None:
            name, bot = conn.state.arena
            self.enter(conn, name, bot, channel)

        rtc = webrtc.Offerer(
            label="arena",
            ordered=False,
            max_retransmits=0,
            on_channel=on_channel,
            open_timeout=open_timeout,
        )
        flow.add(rtc.offer_step, name="webrtc-offer", timeout=30.0)
        flow.add(rtc.connect_step, name="webrtc-connect", timeout=30.0)

        @flow.add
        def play(conn: Connection, message: bytes) -> Result:
            try:
                tag, body = protocol.decode_control(message)
            except protocol.ProtocolError as exc:
                return Close(1003, str(exc))
            member = self.members.get(conn.id)
            if tag == protocol.QUIT:
                return True  # the last step: the connection closes with 1000
            if tag == protocol.CHAT and member is not None:
                text = str(body.get("text", ""))[:200]
                p = member.player
                self.tell(protocol.control(protocol.CHAT, slot=p.slot, name=p.name, text=text))
                self.report({"ev": "chat", "name": p.name, "text": text})
                return False
            return Close(1003, f"unexpected {tag!r} while playing")

        @flow.on_detach
        def detached(conn: Connection) -> None:
            self._report_link(conn, "detached")

        @flow.on_resume
        def resumed(conn: Connection) -> None:
            self._report_link(conn, "resumed")

        @flow.on_close
        def closed(conn: Connection) -> None:
            self.leave(conn)

        flow.on_close(rtc.cleanup)
        return flow

    def _report_link(self, conn: Connection, what: str) -> None:
        member = self.members.get(conn.id)
        name = member.player.name if member else conn.id
        self.report({"ev": what, "id": conn.id, "name": name, "step": conn.step})
