"""Bot players: a socker client flow that plays the arena by itself.

A bot names itself, answers the server's WebRTC offer, then 20 times a second
steers toward the nearest point (inputs on the data channel) while it counts
what it receives: world states (and which ticks it missed: the channel is
unreliable, loss is expected), how long an input takes to come back echoed in a
world state, and which other players it saw move. After ``seconds`` it quits
on the websocket and the server completes the flow with 1000.

``python -m socker_transports.arena.bots URL --name bot-1`` runs one bot and
writes JSON lines (``{"who": "bot-1", "ev": ...}``) on stdout for the view; with
``--cut-at S`` (repeatable) it connects through a `CutRelay` and cuts its own
websocket after S seconds of play (with ``reconnect=True`` the driver resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from socker_core import Close, Connection, Flow, Result

from . import protocol
from .game import World, nearest, toward
from .server import RESUME_WINDOW

INPUT_RATE = 20  # inputs per second
Report = Callable[[dict[str, Any]], None]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Bot:
    """What one bot knows and counts (plain data: the tests read it)."""

    name: str
    seconds: float = 10.0
    id: str | None = None
    slot: int | None = None
    world: World | None = None
    names: dict[int, str] = field(default_factory=dict)  # slot -> name, from J/R
    positions: dict[int, tuple[float, float]] = field(default_factory=dict)
    moving: set[int] = field(default_factory=set)  # slots seen to move
    states: int = 0
    frames_first: int | None = None
    frames_last: int = 0
    seq: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)
    echoed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, input -> echo
    scores: int = 0
    chats: list[str] = field(default_factory=list)
    cut_at_state: int | None = None  # states received when the latest cut happened
    cut_steps: list[str] = field(default_factory=list)  # the step at each cut
    resume_steps: list[str] = field(default_factory=list)  # the step at each resume
    resume_ms: list[float] = field(default_factory=list)  # cut -> resumed, each time
    states_while_cut: list[int] = field(default_factory=list)
    detached_at: float | None = None

    # -- what arrives ----------------------------------------------------------------

    def on_world(self, data: bytes, now: float) -> None:
        frame, world = protocol.decode_world(data)
        self.states += 1
        if self.frames_first is None:
            self.frames_first = frame
        self.frames_last = max(self.frames_last, frame)
        if self.world is None or world.tick > self.world.tick:
            self.world = world  # an older state that arrives late is counted, not drawn
        for slot, x, y, _score, last_input in world.players:
            before = self.positions.get(slot)
            if before is not None and before != (x, y):
                self.moving.add(slot)
            self.positions[slot] = (x, y)
            if slot == self.slot and last_input > self.echoed:
                sent = self.sent_at.pop(last_input, None)
                if sent is not None:
                    self.latencies.append(now - sent)
                for old in [s for s in self.sent_at if s < last_input]:
                    del self.sent_at[old]
                self.echoed = last_input

    def on_control(self, tag: bytes, body: dict[str, Any]) -> None:
        if tag == protocol.ROSTER:
            for card in body.get("players", []):
                self.names[int(card["slot"])] = str(card["name"])
        elif tag == protocol.JOINED:
            self.names[int(body["slot"])] = str(body["name"])
            if body.get("id") == self.id:
                self.slot = int(body["slot"])
        elif tag == protocol.SCORE and body.get("slot") == self.slot:
            self.scores = int(body["score"])
        elif tag == protocol.CHAT:
            self.chats.append(f"{body.get('name')}: {body.get('text')}")

    # -- what goes out ---------------------------------------------------------------

    def next_input(self, now: float) -> bytes:
        dx = dy = 0.0
        if self.world is not None and self.slot is not None:
            me = next((p for p in self.world.players if p[0] == self.slot), None)
            target = nearest(me[1], me[2], self.world.points) if me else None
            if me is not None and target is not None:
                dx, dy = toward(me[1], me[2], target)
        self.seq += 1
        self.sent_at[self.seq] = now
        return protocol.encode_input(self.seq, dx, dy)

    # -- figures ---------------------------------------------------------------------

    @property
    def expected(self) -> int:
        return 0 if self.frames_first is None else self.frames_last - self.frames_first + 1

    @property
    def loss(self) -> float:
        return 0.0 if not self.expected else max(0.0, 1 - self.states / self.expected)

    def seen_moving(self) -> list[str]:
        return sorted(self.names[s] for s in self.moving if s != self.slot and s in self.names)


def bot_flow(
    bot: Bot,
    report: Report,
    *,
    cut: Callable[[], int] | None = None,
    cut_at: Sequence[float] = (),
    clock: Callable[[], float] = time.monotonic,
) -> Flow:
    """The client flow of one bot; `cut()` drops its websocket at each of `cut_at`
    (seconds after play began)."""
    from .. import webrtc

    flow = Flow("arena", resume_window=RESUME_WINDOW)  # both sides opt in to resume

    @flow.on_open
    def introduce(conn: Connection) -> None:
        conn.send(protocol.control(protocol.NAME, name=bot.name, bot=True))

    @flow.add
    def welcome(conn: Connection, message: bytes) -> Result:
        tag, body = protocol.decode_control(message)
        if tag != protocol.WELCOME:
            return Close(1003, "expected the welcome")
        bot.id = str(body["id"])
        report({"ev": "welcome", "id": bot.id})
        conn.send(webrtc.hello())
        return True

    async def play(conn: Connection, channel: Any) -> None:
        start = clock()
        conn.send(protocol.control(protocol.CHAT, text=f"hello from {bot.name}"))
        seconds_mark, states_mark = start, 0
        cuts = sorted(cut_at) if cut is not None else []
        while clock() - start < bot.seconds:
            now = clock()
            if channel.readyState == "open":
                channel.send(bot.next_input(now))
            if cuts and now - start >= cuts[0] and cut is not None:
                cuts.pop(0)
                bot.cut_steps.append(conn.step)
                bot.cut_at_state, bot.detached_at = bot.states, now
                report({"ev": "cut", "step": conn.step, "connections": cut()})
            if now - seconds_mark >= 1.0:
                report(
                    {
                        "ev": "second",
                        "states": (bot.states - states_mark) / (now - seconds_mark),
                        "loss": bot.loss,
                        "p99_ms": _ms(percentile(bot.latencies[-200:], 0.99)),
                        "seen": bot.seen_moving(),
                    }
                )
                seconds_mark, states_mark = now, bot.states
            await asyncio.sleep(1 / INPUT_RATE)
        report({"ev": "quit"})
        conn.send(protocol.control(protocol.QUIT))

    def on_channel(conn: Connection, channel: Any) -> None:
        channel.on("message", lambda data: bot.on_world(bytes(data), clock()))
        conn.state.play = asyncio.get_running_loop().create_task(play(conn, channel))

    rtc = webrtc.Answerer(on_channel=on_channel, open_timeout=10.0)
    flow.add(rtc.connect_step, name="webrtc-connect", timeout=30.0)

    @flow.add
    def control(conn: Connection, message: bytes) -> Result:
        tag, body = protocol.decode_control(message)
        bot.on_control(tag, body)
        if tag in (protocol.JOINED, protocol.LEFT):
            report({"ev": tag.decode(), "name": body.get("name")})
        return False

    def detached(conn: Connection) -> None:
        report({"ev": "detached", "step": conn.step})

    def resumed(conn: Connection) -> None:
        bot.resume_steps.append(conn.step)
        record: dict[str, Any] = {"ev": "resumed", "step": conn.step}
        if bot.detached_at is not None and bot.cut_at_state is not None:
            bot.resume_ms.append((clock() - bot.detached_at) * 1000)
            bot.states_while_cut.append(bot.states - bot.cut_at_state)
            record |= {"ms": bot.resume_ms[-1], "states_while_cut": bot.states_while_cut[-1]}
        report(record)

    flow.on_detach(detached)
    flow.on_resume(resumed)

    @flow.on_close
    async def closed(conn: Connection) -> None:
        task = getattr(conn.state, "play", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    flow.on_close(rtc.cleanup)
    return flow


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(bot: Bot, code: int | None, reason: str) -> dict[str, Any]:
    return {
        "ev": "result",
        "id": bot.id,
        "code": code,
        "reason": reason,
        "states": bot.states,
        "expected": bot.expected,
        "loss": bot.loss,
        "inputs": bot.seq,
        "score": bot.scores,
        "seen": bot.seen_moving(),
        "p50_ms": _ms(percentile(bot.latencies, 0.50)),
        "p99_ms": _ms(percentile(bot.latencies, 0.99)),
        "cut_steps": bot.cut_steps,
        "resume_steps": bot.resume_steps,
        "resume_ms": bot.resume_ms,
        "states_while_cut": bot.states_while_cut,
    }


# -- one bot process ------------------------------------------------------------------


async def run_bot(
    url: str, name: str, seconds: float, cut_at: Sequence[float], report: Report
) -> int:
    """Play one bot to its end; returns the websocket close code (or -1)."""
    from urllib.parse import urlsplit

    from .. import webrtc
    from ..anyio import run_client
    from .cut import CutRelay

    bot = Bot(name, seconds)
    with webrtc.local_only():
        if not cut_at:
            result = await run_client(url, bot_flow(bot, report), reconnect=True)
        else:
            parts = urlsplit(url)
            async with CutRelay(parts.port or 80) as relay:
                relayed = parts._replace(netloc=f"127.0.0.1:{relay.port}").geturl()
                flow = bot_flow(bot, report, cut=relay.cut, cut_at=cut_at)
                result = await run_client(relayed, flow, reconnect=True)
    report(summary(bot, result.code, result.reason))
    return result.code if result.code is not None else -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m socker_transports.arena.bots")
    parser.add_argument("url")
    parser.add_argument("--name", default="bot")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cut-at", type=float, action="append", default=[])
    args = parser.parse_args(argv)

    def report(record: dict[str, Any]) -> None:
        record = {"t": time.monotonic(), "who": args.name, **record}
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    code = asyncio.run(run_bot(args.url, args.name, args.seconds, args.cut_at, report))
    return 0 if code == 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
