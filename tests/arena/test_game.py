"""The arena's pure parts: the game, its messages and the live view's checks."""

from __future__ import annotations

import math

import pytest

from socker_transports.arena import protocol
from socker_transports.arena.bots import Bot
from socker_transports.arena.game import (
    HEIGHT,
    MAX_CATCH_UP,
    POINTS,
    REACH,
    SPEED,
    WIDTH,
    Game,
    Point,
    nearest,
    toward,
)
from socker_transports.arena.view import LiveView


def play(game: Game, inputs: dict[int, list[tuple[float, float]]], ticks: int) -> list[object]:
    """Advance one tick at a time, each player steering by its input for that tick."""
    now, events = 0.0, []
    for i in range(ticks):
        for slot, moves in inputs.items():
            dx, dy = moves[i % len(moves)]
            game.steer(slot, i + 1, dx, dy)
        events += game.advance(now)
        now += 1 / game.tick_rate
    return events


def test_same_seed_inputs_and_times_give_the_same_game() -> None:
    worlds = []
    for _ in range(2):
        game = Game(seed=7)
        a, b = game.add_player("c1", "a"), game.add_player("c2", "b")
        events = play(game, {a.slot: [(1, 0.3)], b.slot: [(-0.5, 1), (0, -1)]}, 200)
        worlds.append((game.world(), events))
    assert worlds[0] == worlds[1]
    assert worlds[0][0].tick == 200
    assert Game(seed=8).points != Game(seed=7).points


def test_ticks_follow_now_at_the_fixed_rate_and_a_stall_is_dropped() -> None:
    game = Game(tick_rate=20)
    game.advance(100.0)
    assert game.tick == 1
    game.advance(100.0 + 0.049)
    assert game.tick == 1  # the next tick is due at +0.05
    assert game.next_tick_at() == pytest.approx(100.05)
    game.advance(100.0 + 0.2)
    assert game.tick == 5
    game.advance(100.0 + 10.0)  # a 10 s stall: at most MAX_CATCH_UP ticks, not 196
    assert game.tick == 5 + MAX_CATCH_UP
    game.advance(100.0 + 10.05)
    assert game.tick == 5 + MAX_CATCH_UP + 1


def test_a_player_moves_at_speed_and_stays_in_the_arena() -> None:
    game = Game()
    p = game.add_player("c1", "a")
    p.x, p.y = 10.0, 10.0
    game.points = [Point(WIDTH - 1, HEIGHT - 1)] * POINTS  # out of the way
    game.steer(p.slot, 1, 1.0, 0.0)
    game.advance(0.0)
    assert (p.x, p.y) == pytest.approx((10.0 + SPEED / game.tick_rate, 10.0))
    game.steer(p.slot, 2, -1.0, -1.0)  # diagonal: still SPEED, not SPEED * sqrt(2)
    x, y = p.x, p.y
    game.advance(1 / game.tick_rate)
    assert math.hypot(p.x - x, p.y - y) == pytest.approx(SPEED / game.tick_rate)
    for i in range(200):
        game.advance((i + 2) / game.tick_rate)
    assert (p.x, p.y) == (0.0, 0.0)


def test_inputs_older_than_the_last_applied_are_ignored() -> None:
    game = Game()
    p = game.add_player("c1", "a")
    assert game.steer(p.slot, 5, 1.0, 0.0)
    assert not game.steer(p.slot, 4, -1.0, 0.0)  # late on the unordered channel
    assert not game.steer(p.slot, 5, -1.0, 0.0)
    assert not game.steer(p.slot, 6, math.nan, 0.0)
    assert not game.steer(99, 7, 1.0, 0.0)  # no such player
    assert game.steer(p.slot, 9, 5.0, -5.0)  # clamped
    assert (p.dx, p.dy, p.last_input) == (1.0, -1.0, 9)


def test_touching_a_point_scores_and_moves_the_point() -> None:
    game = Game(seed=3)
    p = game.add_player("c1", "a")
    target = game.points[0]
    p.x, p.y = target.x - REACH / 2, target.y
    scored = game.advance(0.0)
    assert [(e.slot, e.score) for e in scored] == [(p.slot, 1)]
    assert p.score == 1 and target not in game.points and len(game.points) == POINTS


def test_players_join_and_leave_and_slots_are_not_reused() -> None:
    game = Game()
    a, b = game.add_player("c1", "a"), game.add_player("c2", "b")
    assert game.remove_player(a.slot) is a
    assert game.remove_player(a.slot) is None
    c = game.add_player("c3", "c")
    assert len({a.slot, b.slot, c.slot}) == 3
    assert [row[0] for row in game.world().players] == [b.slot, c.slot]


def test_steering_helpers() -> None:
    assert toward(0, 0, Point(3, 4)) == pytest.approx((0.6, 0.8))
    assert toward(1, 1, Point(1, 1)) == (0.0, 0.0)
    assert nearest(0, 0, [Point(5, 5), Point(1, 1)]) == Point(1, 1)
    assert nearest(0, 0, []) is None


# -- protocol -------------------------------------------------------------------------


def test_world_and_input_round_trip() -> None:
    game = Game(seed=1)
    game.add_player("c1", "a")
    game.add_player("c2", "b")
    game.advance(0.0)
    world = game.world()
    frame, decoded = protocol.decode_world(protocol.encode_world(world, 77))
    assert frame == 77
    assert decoded.tick == world.tick and len(decoded.players) == 2
    for got, sent in zip(decoded.players, world.players, strict=True):
        assert got[0] == sent[0] and got[3:] == sent[3:]
        assert got[1:3] == pytest.approx(sent[1:3], abs=1e-4)  # f32 on the wire
    assert len(decoded.points) == POINTS
    assert protocol.decode_input(protocol.encode_input(42, 0.5, -1.0)) == (42, 0.5, -1.0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"W",
        b"W\x00\x00\x00\x01\x00\x00\x00\x01\x01",
        b"X" + bytes(20),
        protocol.encode_input(1, 0, 0),
    ],
)
def test_malformed_world_states_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_world(data)


def test_world_with_trailing_bytes_is_rejected() -> None:
    good = protocol.encode_world(Game().world(), 1)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_world(good + b"x")


@pytest.mark.parametrize("data", [b"", b"I", b"I" + bytes(13), b"W" + bytes(12)])
def test_malformed_inputs_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_input(data)


def test_control_messages() -> None:
    data = protocol.control(protocol.JOINED, slot=1, name="a")
    assert protocol.decode_control(data) == (protocol.JOINED, {"slot": 1, "name": "a"})
    for bad in (b"", b"Z{}", b"J", b"J[1]", b"J\xff"):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_control(bad)
    with pytest.raises(ValueError):
        protocol.control(b"Z")


# -- a bot's counting -----------------------------------------------------------------


def test_bot_counts_loss_latency_and_who_moved() -> None:
    game = Game(seed=2)
    me, other = game.add_player("c1", "me"), game.add_player("c2", "other")
    bot = Bot("me", id="c1")
    bot.on_control(protocol.ROSTER, {"players": [{"slot": other.slot, "name": "other"}]})
    bot.on_control(protocol.JOINED, {"slot": me.slot, "id": "c1", "name": "me"})
    assert bot.slot == me.slot
    now = 0.0
    for tick in range(10):
        data = bot.next_input(now)
        seq, dx, dy = protocol.decode_input(data)
        game.steer(me.slot, seq, dx, dy)
        game.steer(other.slot, tick + 1, 1.0, 0.0)
        game.advance(now)
        if tick != 4:  # one state lost
            bot.on_world(protocol.encode_world(game.world(), tick + 1), now + 0.01)
        now += 0.05
    assert bot.states == 9 and bot.expected == 10
    assert bot.loss == pytest.approx(0.1)
    assert bot.seen_moving() == ["other"]
    assert bot.latencies and all(v == pytest.approx(0.01) for v in bot.latencies)


# -- the live view's checks -----------------------------------------------------------


def _records(resumed: bool) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"who": "server", "ev": "listening", "url": "ws://x", "t": 0.0}]
    for i, name in enumerate(["bot-1", "bot-2"], 1):
        card = {"slot": i, "id": f"c{i}", "name": name, "bot": True}
        out.append({"who": "server", "ev": "joined", **card, "t": 1.0})
    out.append({"who": "bot-1", "ev": "cut", "step": "control", "connections": 1, "t": 2.0})
    if resumed:
        out.append({"who": "server", "ev": "resumed", "name": "bot-1", "step": "play", "t": 2.1})
        out.append({"who": "bot-1", "ev": "resumed", "step": "control", "ms": 80.0, "t": 2.1})
    for i, name in enumerate(["bot-1", "bot-2"], 1):
        other = "bot-2" if name == "bot-1" else "bot-1"
        left = {"slot": i, "id": f"c{i}", "name": name, "bot": True, "code": 1000}
        left |= {"reason": "flow complete", "states_sent": 90, "inputs": 80, "score": 2}
        out.append({"who": "server", "ev": "left", **left, "t": 5.0})
        result = {"code": 1000, "reason": "", "loss": 0.0, "seen": [other], "p50_ms": 1.0}
        result |= {"p99_ms": 2.0, "cut_steps": ["control"] if i == 1 else []}
        result |= {"resume_steps": ["control"] if resumed and i == 1 else []}
        out.append({"who": name, "ev": "result", **result, "t": 5.0})
    return out


@pytest.mark.parametrize("resumed", [True, False])
def test_live_view_summary_and_its_last_line(resumed: bool) -> None:
    view = LiveView(["bot-1", "bot-2"], cut_bot="bot-1")
    printed = [line for record in _records(resumed) for line in view.add(record)]
    assert any("websocket cut at step 'control'" in line for line in printed)
    assert any("RESUMED" in line for line in printed) is resumed
    lines, ok = view.summary()
    assert ok is resumed
    assert lines[-1] == f"players 2 (2 bots), resumed {int(resumed)}, closed 1000 2"
    if not resumed:
        assert any("[FAILED] bot-1 resumed where cut" in line for line in lines)


def test_live_view_fails_when_a_bot_did_not_see_the_others() -> None:
    view = LiveView(["bot-1", "bot-2"])
    for record in _records(resumed=False):
        if record.get("ev") == "result" and record["who"] == "bot-2":
            record = {**record, "seen": []}
        view.add(record)
    lines, ok = view.summary()
    assert not ok and any("[FAILED] every bot saw the others move" in line for line in lines)
