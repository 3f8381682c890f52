"""The in-memory game example and the core benchmark run (small and fast here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(relative: str) -> ModuleType:
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_game_example_plays_the_readme_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    example = load("examples/game_inmemory.py")
    assert example.main() == 0
    out = capsys.readouterr().out
    assert "| Server | Client |" in out
    assert "| sends `b'scene:players=2;objects=17'` | |" in out
    assert "outcome: closed; server (1000, 'demo over'), client (1000, 'demo over')" in out
    transcript = example.play()
    # The server speaks first (on_open), then the handshake, offer, answer, control.
    assert transcript.entries(kind="send")[0].side == "server"
    assert transcript.steps("server") == ["handshake", "answer", "control"]
    assert transcript.steps("client") == ["scene", "offer", "control"]


def test_the_core_benchmark_reports_both_libraries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    benchmark = load("benchmarks/core_step.py")
    out_json = tmp_path / "core.json"
    argv = ["--repeats", "2", "--messages", "300", "--transitions-messages", "30"]
    assert benchmark.main([*argv, "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert set(result["cases"]) == {"stay", "reply", "advance"}
    for row in result["cases"].values():
        assert row["socker_us"] > 0 and row["transitions_us"] > 0
        assert row["ratio"] == pytest.approx(row["transitions_us"] / row["socker_us"])
        assert len(row["socker_samples"]) == 2
    assert set(result["targets"]) == {"stay_us", "ratio_vs_transitions"}
    table = capsys.readouterr().out
    assert "| stay |" in table and "transitions" in table
    with pytest.raises(SystemExit):
        benchmark.main(["--repeats", "0"])
