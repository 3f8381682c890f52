"""The broadcast benchmark runs end to end (a few clients, two rounds): every
implementation's server reaches every client, and the report has its ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import broadcast


def test_the_broadcast_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "broadcast.json"
    args = ["--clients", "20", "--rounds", "2", "--warmup", "1", "--passes", "1"]
    assert broadcast.main([*args, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert list(report["results"]) == broadcast.IMPLS
    for row in report["results"].values():
        assert row["rounds"] == 2
        assert 0 < row["first_ms"] <= row["last_ms"]
    table = capsys.readouterr().out
    assert "| socker-anyio-trio |" in table and "x |" in table
