"""The arena game itself: pure simulation, no I/O, no clock, no sockets.

Each player steers a dot on a rectangular arena; points lie around it, and a
player who touches one scores and the point reappears elsewhere. The world
advances in fixed ticks (`TICK_RATE` per second): `Game.advance(now)` runs every
tick that is due at `now` (seconds, any monotonic origin) and returns what
happened. Given the same seed, the same inputs and the same `now` values, two
games are identical tick for tick (the tests rely on it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

TICK_RATE = 20  # ticks per second
WIDTH, HEIGHT = 160.0, 100.0  # arena size in game units
SPEED = 40.0  # units per second at full input
REACH = 4.0  # a player within this distance of a point collects it
POINTS = 5  # points on the arena at any time
MAX_CATCH_UP = 5  # ticks run per advance() at most; a longer stall is dropped, not replayed


@dataclass(slots=True)
class Player:
    slot: int  # small number that names the player in world states
    id: str  # the connection id
    name: str
    x: float
    y: float
    dx: float = 0.0  # the last input: direction, each in [-1, 1]
    dy: float = 0.0
    score: int = 0
    last_input: int = 0  # sequence number of the newest input applied (echoed to the player)


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Scored:
    """An event of `advance`: `slot` collected a point and now has `score`."""

    slot: int
    score: int


@dataclass(frozen=True, slots=True)
class World:
    """What every player is sent each tick."""

    tick: int
    players: tuple[tuple[int, float, float, int, int], ...]  # slot, x, y, score, last_input
    points: tuple[Point, ...]


@dataclass
class Game:
    seed: int = 0
    tick_rate: int = TICK_RATE
    tick: int = 0
    players: dict[int, Player] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    _origin: float | None = None  # `now` of tick 1 (moved forward when a stall is dropped)
    _rng: random.Random = field(init=False, repr=False)
    _next_slot: int = 1

    def __post_init__(self) -> None:
        if self.tick_rate <= 0:
            raise ValueError(f"tick_rate must be positive, got {self.tick_rate!r}")
        self._rng = random.Random(self.seed)
        self.points = [self._somewhere() for _ in range(POINTS)]

    def _somewhere(self) -> Point:
        return Point(
            round(self._rng.uniform(5, WIDTH - 5), 2), round(self._rng.uniform(5, HEIGHT - 5), 2)
        )

    # -- players ---------------------------------------------------------------------

    def add_player(self, id: str, name: str) -> Player:
        """A new player at a random free spot; slots are never reused within a game."""
        spot = self._somewhere()
        player = Player(self._next_slot, id, name, spot.x, spot.y)
        self._next_slot += 1
        self.players[player.slot] = player
        return player

    def remove_player(self, slot: int) -> Player | None:
        return self.players.pop(slot, None)

    def steer(self, slot: int, seq: int, dx: float, dy: float) -> bool:
        """Apply input `seq` of player `slot`; older or repeated inputs are ignored
        (the data channel is unordered). Returns whether it was applied."""
        player = self.players.get(slot)
        if player is None or seq <= player.last_input:
            return False
        if not (math.isfinite(dx) and math.isfinite(dy)):
            return False
        player.dx, player.dy = max(-1.0, min(1.0, dx)), max(-1.0, min(1.0, dy))
        player.last_input = seq
        return True

    # -- time ------------------------------------------------------------------------

    def due(self, now: float) -> int:
        """How many ticks are due at `now` (before the catch-up cap)."""
        if self._origin is None:
            return 1
        # tick n is due at origin + (n - 1) / rate; the epsilon absorbs float rounding
        return max(0, int((now - self._origin) * self.tick_rate + 1e-6) + 1 - self.tick)

    def advance(self, now: float) -> list[Scored]:
        """Run every tick due at `now` (the first call runs tick 1)."""
        if self._origin is None:
            self._origin = now
        due = self.due(now)
        if due > MAX_CATCH_UP:  # a stall: drop the backlog instead of fast-forwarding
            self._origin += (due - MAX_CATCH_UP) / self.tick_rate
            due = MAX_CATCH_UP
        events: list[Scored] = []
        for _ in range(due):
            events.extend(self._step())
        return events

    def next_tick_at(self) -> float | None:
        """The `now` at which the next tick is due (None before the first advance)."""
        if self._origin is None:
            return None
        return self._origin + self.tick / self.tick_rate

    def _step(self) -> list[Scored]:
        self.tick += 1
        dt = 1 / self.tick_rate
        events = []
        for player in self.players.values():
            length = math.hypot(player.dx, player.dy)
            scale = SPEED * dt / length if length > 1 else SPEED * dt
            player.x = min(WIDTH, max(0.0, player.x + player.dx * scale))
            player.y = min(HEIGHT, max(0.0, player.y + player.dy * scale))
            for index, point in enumerate(self.points):
                if math.hypot(point.x - player.x, point.y - player.y) <= REACH:
                    player.score += 1
                    self.points[index] = self._somewhere()
                    events.append(Scored(player.slot, player.score))
        return events

    def world(self) -> World:
        players = tuple((p.slot, p.x, p.y, p.score, p.last_input) for p in self.players.values())
        return World(self.tick, players, tuple(self.points))


def toward(x: float, y: float, target: Point) -> tuple[float, float]:
    """The unit direction from (x, y) to `target` (bots steer with it)."""
    dx, dy = target.x - x, target.y - y
    length = math.hypot(dx, dy)
    if length < 1e-9:
        return 0.0, 0.0
    return dx / length, dy / length


def nearest(x: float, y: float, points: tuple[Point, ...] | list[Point]) -> Point | None:
    return min(points, key=lambda p: math.hypot(p.x - x, p.y - y), default=None)
