"""`socker serve --workers N` and `socker_transports.workers.run`: N processes on one
port, connections spread across them, a killed worker restarted (and logged), SIGTERM
drains every worker and exits 0."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]
FLOW = "tests.transports.worker_flows:pid_server"


class Supervised:
    """A supervisor process; its stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._stderr_changed = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = self.proc.stdout, self.proc.stderr
        threading.Thread(target=self._pump_out, args=(out,), daemon=True).start()
        threading.Thread(target=self._pump_err, args=(err,), daemon=True).start()
        self.url = self._wait_for_url()

    def _pump_out(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stdout.put(line)
        self.stdout.put(None)

    def _pump_err(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._stderr_changed:
                self.stderr.append(line)
                self._stderr_changed.notify_all()

    def _wait_for_url(self) -> str:
        while True:
            try:
                line = self.stdout.get(timeout=deadline(30))
            except queue.Empty:
                raise AssertionError("the supervisor printed no ws:// line in time") from None
            if line is None:
                self.proc.wait(deadline(5))
                raise AssertionError(f"the supervisor exited: {''.join(self.stderr)}")
            for word in line.split():
                if word.startswith("ws://"):
                    return word

    def wait_for_log(self, text: str, seconds: float = 10) -> str:
        end = time.monotonic() + deadline(seconds)
        with self._stderr_changed:
            while True:
                for line in self.stderr:
                    if text in line:
                        return line
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no log line with {text!r}: {''.join(self.stderr)}")
                self._stderr_changed.wait(remaining)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(deadline(5))


@pytest.fixture
def supervised() -> Iterator[type[Supervised]]:
    started: list[Supervised] = []

    class Tracked(Supervised):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def serving_pid(url: str) -> int:
    with ws_connect(url, open_timeout=deadline(5)) as client:
        return int(client.recv(timeout=deadline(5)))


def pids_until(url: str, want: int, *, attempts: int = 64) -> set[int]:
    """Connect (bounded) until `want` distinct worker pids have answered."""
    seen: set[int] = set()
    for _ in range(attempts):
        seen.add(serving_pid(url))
        if len(seen) >= want:
            break
    return seen


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "driver", [["--backend", "asyncio"], ["--backend", "trio"], ["--driver", "threaded"]]
)
def test_two_workers_share_one_port_and_sigterm_drains_them(
    supervised: type[Supervised], driver: list[str]
) -> None:
    server = supervised(
        "-m", "socker_transports", "serve", FLOW, "--port", "0", "--workers", "2",
        *driver, "--close-timeout", "2",
    )  # fmt: skip
    pids = pids_until(server.url, 2)
    assert len(pids) == 2, "64 connections all went to one worker"
    assert server.proc.pid not in pids
    if sys.platform.startswith("linux"):
        assert {parent_of(pid) for pid in pids} == {server.proc.pid}
    # A connection that stays open is closed with 1001 by the drain.
    with ws_connect(server.url, open_timeout=deadline(5)) as client:
        client.recv(timeout=deadline(5))
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=deadline(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert server.proc.wait(deadline(20)) == 0
    assert not any(alive(pid) for pid in pids)


def test_a_killed_worker_is_restarted_and_logged(supervised: type[Supervised]) -> None:
    server = supervised(
        "-m", "socker_transports", "serve", FLOW, "--port", "0", "--workers", "2",
        "--close-timeout", "2",
    )  # fmt: skip
    before = pids_until(server.url, 2)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    logged = server.wait_for_log(f"(pid {victim}) exited with signal SIGKILL")
    assert "restarting" in logged
    restarted = server.wait_for_log("restarted (pid", seconds=10)  # the replacement's line
    new_pid = int(restarted.rsplit("pid ", 1)[1].rstrip(")\n"))
    assert new_pid not in before
    # The replacement serves on the same port; the killed pid never answers again.
    end = time.monotonic() + deadline(15)
    after: set[int] = set()
    while len(after - before) < 1 and time.monotonic() < end:
        after.add(serving_pid(server.url))
    assert victim not in after
    assert after - before, "the restarted worker never served a connection"
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(deadline(20)) == 0


def test_workers_of_a_killed_supervisor_drain_and_exit(supervised: type[Supervised]) -> None:
    server = supervised(
        "-m", "socker_transports", "serve", FLOW, "--port", "0", "--workers", "2",
        "--close-timeout", "2",
    )  # fmt: skip
    pids = pids_until(server.url, 2)
    assert len(pids) == 2
    server.kill()  # SIGKILL: the supervisor cannot tell anyone
    end = time.monotonic() + deadline(15)
    while any(alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "orphaned workers kept running"


def test_workers_run_from_python_on_one_inherited_socket(supervised: type[Supervised]) -> None:
    """The fallback where SO_REUSEPORT is missing: one listening socket, inherited."""
    server = supervised("-m", "tests.transports.worker_flows", "0")
    assert len(pids_until(server.url, 2)) == 2
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(deadline(20)) == 0


def test_bad_worker_counts_are_usage_errors() -> None:
    for extra in (["--workers", "0"], ["--workers", "-3"]):
        done = subprocess.run(
            [sys.executable, "-m", "socker_transports", "serve", FLOW, "--port", "0", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=deadline(20),
        )
        assert done.returncode == 2, done.stderr
        assert "socker: error:" in done.stderr
