"""The engine-rooms benchmark runs end to end (small counts, its own redis-server)."""

from __future__ import annotations

import pytest

from benchmarks import engine_rooms


def test_the_engine_rooms_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_rooms.main(["--count", "20", "--confirmed", "5"]) == 0
    table = capsys.readouterr().out
    for backend in ("asyncio", "uvloop", "trio"):
        assert f"| {backend} | memory |" in table and f"| {backend} | redis |" in table
