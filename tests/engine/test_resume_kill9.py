"""kill -9 one worker while broadcasts flow at 100 per second: its clients resume on
the other workers (or its replacement), and across the whole room no message is lost
and none is duplicated (asserted: every client has exactly the published sequence).

`socker serve --workers 2 --engine redis://...` on a real redis-server; the room's
messages come from this test process, publishing to the same Redis as one more
worker would (the cluster's publication envelope), 100 per second, bounded in count
and time."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import anyio
import pytest

from socker_core import Close, Connection, Flow
from socker_transports import anyio as socker_anyio
from socker_transports.engine.cluster import encode_publication
from socker_transports.engine.redis_engine import RedisEngine
from tests.timing import deadline
from tests.transports.test_workers import Supervised

FLOW = "tests.engine.xresume_flows:player"
CLIENTS = 10
MESSAGES = 500  # at 100 per second: 5 s
RATE = 100.0
KILL_AFTER = 150  # messages published before the kill


class Player:
    """One socker client with reconnect=True; what it heard, in order."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.heard: list[int] = []
        self.pids: list[int] = []
        self.resumed_on: list[int] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.lock = threading.Lock()

    def flow(self) -> Flow:
        flow = Flow(f"watcher-{self.index}")

        @flow.step
        def watch(conn: Connection, message: bytes) -> Close | None:
            with self.lock:
                if message.startswith(b"pid:"):
                    self.pids.append(int(message[4:]))
                    self.opened.set()
                elif message.startswith(b"resumed:"):
                    self.resumed_on.append(int(message[8:]))
                elif message == b"end":
                    return Close(1000, "seen it all")
                else:
                    self.heard.append(int(message))
            return None

        return flow


def both_workers_serve(url: str) -> set[int]:
    """Connect (bounded) until both workers have answered: both are accepting."""
    from websockets.sync.client import connect

    seen: set[int] = set()
    for _ in range(64):
        with connect(url, open_timeout=deadline(5)) as probe:
            first = probe.recv(timeout=deadline(5))
        assert isinstance(first, bytes) and first.startswith(b"pid:"), first
        seen.add(int(first[4:]))
        if len(seen) == 2:
            break
    return seen


async def _publish(url: str, count: int, killed: threading.Event, kill: Any) -> None:
    async with RedisEngine(url) as engine:
        start = time.monotonic()
        for n in range(count):
            # Paced at RATE: publication n at start + n / RATE (no burst after a stall).
            await anyio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            if n == KILL_AFTER:
                kill()
                killed.set()
            await engine.publish("match", encode_publication(b"%d" % n))
        await engine.publish("match", encode_publication(b"end"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "driver",
    [["--backend", "asyncio"], ["--backend", "trio"], ["--driver", "threaded"]],
    ids=["asyncio", "trio", "threaded"],
)
def test_kill_9_a_worker_while_the_room_streams_loses_and_repeats_nothing(
    redis_url: str, driver: list[str]
) -> None:
    server = Supervised(
        "-m", "socker_transports", "serve", FLOW, "--port", "0", "--workers", "2",
        *driver, "--engine", redis_url, "--close-timeout", "2", "-v",  # -v: its log on failure
    )  # fmt: skip
    players = [Player(i) for i in range(CLIENTS)]
    threads: list[threading.Thread] = []
    try:
        serving = both_workers_serve(server.url)
        assert len(serving) == 2, f"only {serving} answered 64 connections"

        def run(player: Player) -> None:
            async def bounded() -> Any:
                with anyio.fail_after(deadline(60.0)):
                    return await socker_anyio.run_client(server.url, player.flow(), reconnect=True)

            try:
                player.result = anyio.run(bounded)
            except BaseException as exc:  # reported below, with what it heard
                player.error = exc

        for player in players:
            thread = threading.Thread(target=run, args=(player,), daemon=True)
            thread.start()
            threads.append(thread)
        for player in players:
            assert player.opened.wait(deadline(15.0)), f"player {player.index} never opened"
        pids = {player.pids[0] for player in players}
        assert len(pids) == 2, f"{CLIENTS} players all landed on one worker"
        # The victim: the worker with the most players (they all must resume elsewhere).
        victim = max(pids, key=lambda pid: sum(p.pids[0] == pid for p in players))
        on_victim = [p for p in players if p.pids[0] == victim]
        killed = threading.Event()
        time.sleep(0.2)  # every join reached Redis (the engine joins in the background)

        def kill() -> None:
            os.kill(victim, signal.SIGKILL)

        anyio.run(_publish, redis_url, MESSAGES, killed, kill)
        assert killed.is_set()
        for thread in threads:
            thread.join(deadline(30.0))
        assert not any(thread.is_alive() for thread in threads), "a player never saw the end"
    finally:
        server.kill()

    everything = list(range(MESSAGES))
    if any(p.result is None for p in players):
        import sys

        for p in players:
            print("PLAYER", p.index, p.error, len(p.heard), p.pids, p.resumed_on, file=sys.stderr)
        print("VICTIM", victim, "".join(server.stderr), file=sys.stderr)
    for player in players:
        assert player.result is not None and player.result.code == 1000, (
            player.index,
            player.result,
            player.error,
            len(player.heard),
            player.heard[-3:],
            player.pids,
            player.resumed_on,
            victim,
            "".join(server.stderr[-30:]),
        )
        # 0 lost, 0 duplicated, in order: exactly the published sequence.
        assert player.heard == everything, (
            player.index,
            len(player.heard),
            [n for n in everything if n not in set(player.heard)][:10],
        )
    for player in on_victim:
        assert player.resumed_on, f"player {player.index} on the killed worker never resumed"
        assert victim not in player.resumed_on
    assert all(not p.resumed_on for p in players if p not in on_victim)
