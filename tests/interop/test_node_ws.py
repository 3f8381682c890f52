"""Interop with Node's `ws` (8.x), a peer nobody here wrote: its client against
every socker server driver, and every socker client driver against its server,
each running one side of the 4-step game handshake (tests/transports/flows.py)
with binary messages. `ws_peer.js` prints one JSON result line per run.

Needs `make node-deps` (npm ci in tests/interop, from package-lock.json).
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.timing import deadline
from tests.transports.conftest import StartServer
from tests.transports.flows import (
    ANSWER_PREFIX,
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    Log,
    make_game_client,
    make_game_server,
)
from tests.transports.harness import DriverHarness

HERE = Path(__file__).resolve().parent
PEER = HERE / "ws_peer.js"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, once `ws` 8.x is installed here (else a clear failure)."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not on PATH: install Node.js 18+ and run `make node-deps`")
    package = HERE / "node_modules" / "ws" / "package.json"
    if not package.is_file():
        pytest.fail(f"Node's ws is not installed in {HERE}: run `make node-deps`")
    version = json.loads(package.read_text())["version"]
    assert version.startswith("8."), f"expected ws 8.x, found {version}: run `make node-deps`"
    return binary


def _result(stdout: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    results = [line for line in lines if line.get("event") == "result"]
    assert len(results) == 1, f"expected one result line from ws_peer.js, got: {stdout!r}"
    result: dict[str, Any] = results[0]
    return result


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line from proc's stdout within `timeout` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no output from ws_peer.js within {timeout}s")
    return proc.stdout.readline()


@pytest.fixture
def node_server(node: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A Node `ws` server for one connection; yields (url, process)."""
    timeout = deadline(10)
    proc = subprocess.Popen(
        [node, str(PEER), "server", str(int(timeout * 1000))],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, deadline(10))
        ready = json.loads(line) if line.startswith("{") else {}
        assert ready.get("event") == "listening", f"ws_peer.js server did not start: {line!r}"
        yield f"ws://127.0.0.1:{ready['port']}/game", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=deadline(5))


def test_node_client_against_socker_server(node: str, start_server: StartServer) -> None:
    log = Log()
    server = start_server({"/game": make_game_server(log)})
    timeout = deadline(10)
    proc = subprocess.run(
        [node, str(PEER), "client", f"{server.url}/game", str(int(timeout * 1000))],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout + deadline(5),
        check=False,
    )
    result = _result(proc.stdout)
    assert result["errors"] == [], (result, proc.stderr)
    assert (result["code"], result["reason"]) == (1000, "flow complete")
    assert result["received"] == [
        SCENE.decode(),
        OFFER.decode(),
        CONNECTED.decode(),
        SPAWNED.decode(),
    ]
    assert result["step"] == "control"
    assert result["state"]["spawned"] is True
    assert proc.returncode == 0, proc.stderr
    (end,) = log.wait_for(1, deadline(5))
    assert (end.flow, end.step, end.code) == ("game-server", "control", 1000)
    assert end.state == {"player": "node-player", "remote": "v=0 o=node"}


def test_socker_client_against_node_server(
    driver: DriverHarness, node_server: tuple[str, subprocess.Popen[str]]
) -> None:
    url, proc = node_server
    log = Log()
    result = driver.run_client(url, make_game_client(log), timeout=deadline(10))
    assert (result.code, result.reason, result.handshake_status) == (1000, "flow complete", 101)
    (end,) = log.wait_for(1, deadline(5))
    assert (end.flow, end.step, end.code) == ("game-client", "control", 1000)
    assert end.state == {
        "scene": SCENE.decode(),
        "offer": OFFER.decode(),
        "spawned": True,
    }
    stdout, stderr = proc.communicate(timeout=deadline(10))
    peer = _result(stdout)
    assert peer["errors"] == [], (peer, stderr)
    assert (peer["code"], peer["reason"]) == (1000, "flow complete")  # socker's echo
    answer = (ANSWER_PREFIX + b"v=0 o=client").decode()
    assert peer["received"] == ["hi p1", "ready", answer, "spawn", "bye"]
    assert peer["state"] == {"player": "p1", "remote": "v=0 o=client"}
    assert proc.returncode == 0, stderr
