"""mypy --strict accepts the typed API and rejects its misuse.

`snippets/good_*.py` must type-check cleanly; in `snippets/bad_*.py` every line
marked `# error: TEXT` must get a mypy error containing TEXT, and no other line
may get one. One mypy run (in a subprocess, with the project's configuration)
checks them all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = Path(__file__).with_name("snippets")
ERROR_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def expected_errors(path: Path) -> dict[int, str]:
    """Line number -> the text its mypy error must contain."""
    expected = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        _, marker, text = line.partition("# error: ")
        if marker:
            expected[number] = text.strip()
    return expected


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, dict[int, str]]:
    files = sorted(SNIPPETS.glob("*.py"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            "--show-absolute-path",
            *map(str, files),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=deadline(240),
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2 would be a crash
    errors: dict[str, dict[int, str]] = {path.name: {} for path in files}
    for line in done.stdout.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            name = Path(match["path"]).name
            assert name in errors, f"an error outside the snippets: {line}"
            errors[name][int(match["line"])] = match["message"]
    return errors


@pytest.mark.parametrize("name", sorted(p.name for p in SNIPPETS.glob("good_*.py")))
def test_good_snippets_type_check(name: str, mypy_errors: dict[str, dict[int, str]]) -> None:
    assert expected_errors(SNIPPETS / name) == {}
    assert mypy_errors[name] == {}


@pytest.mark.parametrize("name", sorted(p.name for p in SNIPPETS.glob("bad_*.py")))
def test_bad_snippets_fail_where_marked(name: str, mypy_errors: dict[str, dict[int, str]]) -> None:
    expected = expected_errors(SNIPPETS / name)
    assert expected, f"{name} marks no line with '# error:'"
    got = mypy_errors[name]
    assert sorted(got) == sorted(expected), got
    for line, text in expected.items():
        assert text in got[line], f"{name}:{line}: expected {text!r}, mypy said {got[line]!r}"


def test_every_snippet_is_good_or_bad() -> None:
    names = [p.name for p in SNIPPETS.glob("*.py")]
    assert names and all(n.startswith(("good_", "bad_")) for n in names)
