"""`python -m benchmarks.resume` runs (tiny counts): the figures in the report come
from a command that works."""

from __future__ import annotations

from pathlib import Path

from benchmarks import resume


def test_the_resume_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "resume.json"
    assert (
        resume.main(
            [
                "latency",
                "wire",
                "memory",
                "--drops",
                "3",
                "--sessions",
                "5",
                "--messages",
                "640",
                "--drivers",
                "anyio-asyncio,threaded",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert '"p99_ms"' in text and '"bytes_per_session"' in text and '"resumable_us"' in text
