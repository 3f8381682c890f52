"""The match without sockets: players enter and leave, ticks go to every data channel,
inputs steer, and bad input ends the connection with 1003 (fake connections and
channels; the real ones are exercised by test_demo_run and the Chromium test)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from socker_transports.arena import protocol
from socker_transports.arena.server import Match


@dataclass(eq=False)
class FakeConn:
    id: str
    sent: list[bytes] = field(default_factory=list)
    is_open: bool = True
    is_detached: bool = False
    close_code: int | None = None
    close_reason: str = ""
    step: str = "play"

    def send(self, data: bytes) -> None:
        assert self.is_open
        self.sent.append(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.is_open, self.close_code, self.close_reason = False, code, reason

    def controls(self) -> list[tuple[bytes, dict[str, Any]]]:
        return [protocol.decode_control(m) for m in self.sent]


@dataclass(eq=False)
class FakeChannel:
    readyState: str = "open"  # aiortc's attribute name
    sent: list[bytes] = field(default_factory=list)
    listeners: dict[str, Callable[[object], None]] = field(default_factory=dict)

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def on(self, event: str, listener: Callable[[object], None]) -> None:
        self.listeners[event] = listener


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_enter_tick_steer_and_leave() -> None:
    clock, records = Clock(), []
    match = Match(report=records.append, clock=clock)
    a, b = FakeConn("c1"), FakeConn("c2")
    ca, cb = FakeChannel(), FakeChannel()
    match.enter(a, "alice", False, ca)
    match.enter(b, "bob", True, cb)
    # The newcomer gets the roster, then everyone in the match is told.
    assert [t for t, _ in a.controls()] == [protocol.ROSTER, protocol.JOINED, protocol.JOINED]
    assert b.controls()[0] == (protocol.ROSTER, {"players": [a.controls()[1][1]]})
    assert b.controls()[1][1] == {"slot": 2, "id": "c2", "name": "bob", "bot": True}
    assert [r["ev"] for r in records] == ["joined", "joined"]

    match.tick()
    clock.now += 0.05
    ca.listeners["message"](protocol.encode_input(1, 1.0, 0.0))
    match.tick()
    assert len(ca.sent) == len(cb.sent) == 2  # one world per tick on every channel
    (f1, first), (f2, second) = (protocol.decode_world(d) for d in ca.sent)
    assert (f1, f2) == (1, 2)
    assert (first.tick, second.tick) == (1, 2)
    alice = {row[0]: row for row in second.players}[1]
    assert alice[4] == 1  # the input is echoed
    assert alice[1] > {row[0]: row for row in first.players}[1][1]  # and she moved right

    cb.readyState = "closing"  # a channel that is going away is skipped, not an error
    clock.now += 0.05
    match.tick()
    assert len(cb.sent) == 2 and len(ca.sent) == 3

    a.close(1000, "flow complete")
    match.leave(a)
    assert b.controls()[-1] == (
        protocol.LEFT,
        {"slot": 1, "id": "c1", "name": "alice", "bot": False},
    )
    assert records[-1]["ev"] == "left" and records[-1]["code"] == 1000
    assert list(match.game.players) == [2]
    match.leave(a)  # twice is harmless
    assert len(records) == 3


def test_bad_input_on_the_data_channel_closes_with_1003() -> None:
    match = Match(clock=Clock())
    conn, channel = FakeConn("c1"), FakeChannel()
    match.enter(conn, "mallory", False, channel)
    channel.listeners["message"](b"not an input")
    assert conn.close_code == 1003
    conn2, channel2 = FakeConn("c2"), FakeChannel()
    match.enter(conn2, "text", False, channel2)
    channel2.listeners["message"]("a text message")
    assert conn2.close_code == 1003


def test_scores_are_told_to_the_match() -> None:
    clock = Clock()
    match = Match(clock=clock)
    conn, channel = FakeConn("c1"), FakeChannel()
    member = match.enter(conn, "alice", False, channel)
    target = match.game.points[0]
    member.player.x, member.player.y = target.x, target.y
    match.tick()
    assert conn.controls()[-1] == (protocol.SCORE, {"slot": 1, "score": 1})


def test_a_detached_player_is_still_told_and_a_closed_one_is_not() -> None:
    match = Match(clock=Clock())
    away, gone = FakeConn("c1"), FakeConn("c2")
    match.enter(away, "away", False, FakeChannel())
    match.enter(gone, "gone", False, FakeChannel())
    away.is_open, away.is_detached = False, True  # transport lost, waiting to resume
    gone.is_open = False  # closing: nothing more for it
    sent_away, sent_gone = len(away.sent), len(gone.sent)
    away.send = away.sent.append  # type: ignore[method-assign] (a detached send is kept)
    match.enter(FakeConn("c3"), "new", False, FakeChannel())
    assert len(away.sent) == sent_away + 1 and away.controls()[-1][0] == protocol.JOINED
    assert len(gone.sent) == sent_gone
