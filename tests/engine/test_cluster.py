"""Two "machines" (two `socker serve` supervisors on two ports), two workers each,
one Redis: clients spread over all four workers in one room receive every broadcast
in the same order, presence lists everyone, and the members of a worker killed -9
leave presence within the ttl; a Redis restart mid-stream is never a silent gap.
The application is examples/cluster_room.py on the server's engine= API."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.engine.conftest import RedisServer
from tests.timing import deadline
from tests.transports.test_workers import Supervised

MESSAGES_PER_CLIENT = 5
PRESENCE_TTL = 1.5


def engine_url(redis_url: str) -> str:
    """The Redis URL with the engine's options (a short presence ttl and timeout)."""
    return f"{redis_url}?presence_ttl={PRESENCE_TTL}&timeout=1"


def serve_command(url: str, how: str) -> list[str]:
    if how == "socker serve":
        return [
            *("-m", "socker_transports", "serve", "examples.cluster_room:flow"),
            *("--engine", engine_url(url), "--workers", "2", "--port", "0", "--close-timeout", "2"),
        ]
    # The script: the same flow with an on_resync hook that keeps the members.
    return ["examples/cluster_room.py", engine_url(url), "--workers", "2", "--port", "0"]


def start_machines(url: str, how: str = "socker serve") -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    try:
        for _ in range(2):
            started.append(Supervised(*serve_command(url, how)))
        yield started
    finally:
        for machine in started:
            machine.kill()


@pytest.fixture
def machines(redis_url: str) -> Iterator[list[Supervised]]:
    yield from start_machines(redis_url)


@pytest.fixture(params=["socker serve", "on_resync script"])
def machines_on_own_redis(
    own_redis: RedisServer, request: pytest.FixtureRequest
) -> Iterator[list[Supervised]]:
    yield from start_machines(own_redis.url, request.param)


class Player:
    def __init__(self, url: str) -> None:
        self._cm = ws_connect(url, open_timeout=deadline(5))
        self.ws: ClientConnection = self._cm.__enter__()
        hello = json.loads(self.ws.recv(timeout=deadline(10)))
        self.pid: int = hello["pid"]
        self.member: str = hello["member"]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def recv(self) -> bytes:
        data = self.ws.recv(timeout=deadline(10))
        assert isinstance(data, bytes)
        return data

    def recv_until(self, *wanted: bytes) -> list[bytes]:
        """Every message up to and including the first of `wanted`."""
        got: list[bytes] = []
        while not got or got[-1] not in wanted:
            got.append(self.recv())
        return got

    def who(self) -> set[str]:
        self.ws.send(b"who")
        while True:
            data = self.recv()
            if data.startswith(b"who:"):
                return set(json.loads(data[4:]))


def spread_players(machines: list[Supervised]) -> list[Player]:
    """Connect (bounded) until every worker of every machine has a player."""
    players: list[Player] = []
    for machine in machines:
        pids: set[int] = set()
        for _ in range(32):
            player = Player(machine.url)
            players.append(player)
            pids.add(player.pid)
            if len(pids) == 2:
                break
        assert len(pids) == 2, "32 connections all went to one worker"
    return players


def test_a_room_across_four_workers_on_two_machines(machines: list[Supervised]) -> None:
    players = spread_players(machines)
    try:
        assert len({p.pid for p in players}) == 4
        # Joins reach the engine in the background: once presence lists everyone,
        # every worker is subscribed (a member shows in presence only then).
        everyone = {p.member for p in players}
        end = time.monotonic() + deadline(10)
        while players[0].who() != everyone:
            assert time.monotonic() < end, "presence never listed everyone"
            time.sleep(0.05)
        for index, player in enumerate(players):
            for n in range(MESSAGES_PER_CLIENT):
                player.ws.send(f"say:{index}-{n}".encode())
        expected = len(players) * MESSAGES_PER_CLIENT
        seen = [[player.recv() for _ in range(expected)] for player in players]
        first = seen[0]
        assert all(sequence == first for sequence in seen), "players disagree on the order"
        assert sorted(first) == sorted(
            f"{i}-{n}".encode() for i in range(len(players)) for n in range(MESSAGES_PER_CLIENT)
        )
        for index in range(len(players)):  # each sender's messages in its own order
            own = [m for m in first if m.startswith(f"{index}-".encode())]
            assert own == [f"{index}-{n}".encode() for n in range(MESSAGES_PER_CLIENT)]
        # skip= crosses workers: nobody but the sender misses a shout.
        players[0].ws.send(b"shout:not for the sender")
        for player in players[1:]:
            assert player.recv() == b"not for the sender"
        players[1].ws.send(b"say:after the shout")
        assert players[0].recv() == b"after the shout"  # the shout never reached it
        for player in players[1:]:
            assert player.recv() == b"after the shout"
        everyone = {p.member for p in players}
        assert players[0].who() == everyone
        assert players[-1].who() == everyone

        # kill -9 one worker: its players drop out of presence within the ttl.
        victim = players[0].pid
        os.kill(victim, signal.SIGKILL)
        survivors = [p for p in players if p.pid != victim]
        gone = {p.member for p in players if p.pid == victim}
        killed_at = time.monotonic()
        end = killed_at + deadline(PRESENCE_TTL + 5)
        while survivors[0].who() & gone and time.monotonic() < end:
            time.sleep(0.1)
        assert survivors[0].who() == everyone - gone
        assert time.monotonic() - killed_at <= deadline(PRESENCE_TTL + 5)
    finally:
        for player in players:
            player.close()
    for machine in machines:
        machine.proc.send_signal(signal.SIGTERM)
        assert machine.proc.wait(deadline(20)) == 0


def test_a_redis_restart_mid_stream_is_never_a_silent_gap_for_clients(
    machines_on_own_redis: list[Supervised], own_redis: RedisServer
) -> None:
    machines = machines_on_own_redis
    # The script (rather than `socker serve`) sets an on_resync hook that keeps members.
    keeps_members = "examples/cluster_room.py" in machines[0].proc.args  # type: ignore[operator]
    players = spread_players(machines)
    everyone = {p.member for p in players}
    end = time.monotonic() + deadline(10)
    while players[0].who() != everyone:
        assert time.monotonic() < end, "presence never listed everyone"
        time.sleep(0.05)
    sender = players[0]
    try:
        before = [f"a{n}".encode() for n in range(5)]
        for text in before:
            sender.ws.send(b"say:" + text)
        for player in players:
            assert [player.recv() for _ in before] == before

        own_redis.stop()
        sender.ws.send(b"say:lost")
        # The typed error reaches the application; the connection stays up.
        assert sender.recv_until(b"lost", b"unavailable:lost")[-1] == b"unavailable:lost"
        own_redis.start()

        if not keeps_members:
            # Redis lost its data, so no worker could backfill: by default every
            # member is closed with 4414 (it reconnects and rebuilds), never left
            # with a silent gap. What each had before the close is complete.
            for player in players:
                got: list[bytes] = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        got.append(player.recv())
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4414
                assert b"lost" not in got
                player.close()
            # The service recovered by itself: new clients on every worker share the
            # room again, in one order.
            players = spread_players(machines)
            sender = players[0]
            everyone = {p.member for p in players}
            end = time.monotonic() + deadline(15)
            while players[0].who() != everyone:
                assert time.monotonic() < end, "presence never listed everyone again"
                time.sleep(0.05)
            after = [f"b{n}".encode() for n in range(5)]
            for text in after:
                sender.ws.send(b"say:" + text)
            for player in players:
                assert [player.recv() for _ in after] == after
            return

        # With an on_resync hook the members stay and are told. Publishing recovers
        # by itself once the workers' engines have reconnected (bounded retries).
        after = [f"b{n}".encode() for n in range(5)]
        end = time.monotonic() + deadline(15)
        sender_saw: list[bytes] = []  # what the sender read while retrying
        while True:
            sender.ws.send(b"say:" + after[0])
            sender_saw += sender.recv_until(after[0], b"unavailable:" + after[0])
            if sender_saw[-1] == after[0]:
                break
            assert time.monotonic() < end, "publishing never recovered"
            time.sleep(0.05)
        sender_saw = [m for m in sender_saw if not m.startswith(b"unavailable:")]
        for text in after[1:]:
            sender.ws.send(b"say:" + text)
        for player in players:
            got = player.recv_until(after[-1])
            if player is sender:
                got = sender_saw + got
            messages = [m for m in got if m != b"resync"]
            assert b"lost" not in messages  # never published: never delivered
            # Redis lost its data, so no worker could backfill: each was told.
            assert got.count(b"resync") == 1, got
            # After the resync, the new numbering arrives whole, in order.
            assert got[got.index(b"resync") + 1 :] == after, got
            assert messages[-len(after) :] == after
    finally:
        for player in players:
            player.close()
    for machine in machines:
        machine.proc.send_signal(signal.SIGTERM)
        assert machine.proc.wait(deadline(20)) == 0
