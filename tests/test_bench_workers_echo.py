"""The workers echo benchmark runs end to end with tiny counts (`socker serve` with 1
and with 2 workers, two load clients, a fraction of a second each): both worker
counts echo, the window's CPU accounting is filled in, and the table is printed.
No timings are asserted: speed belongs in the benchmark's own figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import workers_echo


def test_the_workers_echo_benchmark_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "workers_echo.json"
    args = ["--connections", "4", "--client-processes", "2", "--depth", "2", "--rounds", "1"]
    args += ["--warmup", "0.2", "--duration", "0.3", "--output", str(output)]
    assert workers_echo.main(args) == 0
    report = json.loads(output.read_text())
    for workers in (1, 2):
        row = report[f"workers_{workers}"]
        assert len(row["rounds"]) == 1
        assert row["msg_per_s"] > 0  # replies were counted in the window
        assert row["server_cpu_us_per_msg"] >= 0 and row["client_cpu_us_per_msg"] >= 0
        assert row["worker_cpu_wait"] >= 0
    assert report["ratio_2_over_1"] > 0 and report["ceiling_ratio"] > 0
    table = capsys.readouterr().out
    assert "| 1 |" in table and "| 2 |" in table and "2 workers / 1 worker" in table
