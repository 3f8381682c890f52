"""The README's command-line example flows run end to end over the CLI."""

from __future__ import annotations

import subprocess
import sys

from socker_core.testing import run_pair
from tests.timing import deadline


def test_game_flows_complete_in_memory() -> None:
    from examples.game_flows import client, server

    transcript = run_pair(server, client)
    assert transcript.steps("server") == ["handshake", "answer", "control"]
    assert transcript.steps("client") == ["build_scene", "take_offer", "joined", "play"]


def test_graph_command_prints_the_chain() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "socker_transports", "graph", "examples.game_flows:server"],
        capture_output=True,
        text=True,
        timeout=deadline(30),
        check=True,
    ).stdout
    assert out.startswith("stateDiagram-v2")
    assert "handshake" in out and "control" in out
