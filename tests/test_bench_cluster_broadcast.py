"""The cluster broadcast benchmark runs end to end with tiny counts (a real
redis-server, both systems' 2 workers, a few clients, two rounds): every client gets
every round, both workers hold clients, and the report has its ratios. No timings
are asserted: speed belongs in the benchmark's own figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cluster_broadcast


def test_the_cluster_broadcast_benchmark_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "cluster_broadcast.json"
    args = ["--clients", "24", "--rounds", "2", "--warmup", "1", "--passes", "1"]
    assert cluster_broadcast.main([*args, "--client-processes", "2", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert list(report["results"]) == cluster_broadcast.SYSTEMS
    for row in report["results"].values():
        assert row["rounds"] == 2
        assert 0 < row["first_p50_ms"] <= row["last_p50_ms"]
        # one setup, the 24 clients spread over both workers
        [split] = row["worker_split"]
        assert len(split) == cluster_broadcast.WORKERS and sum(split) == 24
    table = capsys.readouterr().out
    assert "| socker |" in table and "| python-socketio |" in table and "x |" in table
