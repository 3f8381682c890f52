"""Every Python block in README.md runs, so the README cannot drift from the code.

Each ```python block runs on its own in a fresh interpreter, in an empty folder
(only the installed packages are importable) and must exit 0. A block that is
deliberately a fragment carries the marker line

    <!-- readme-test: fragment -->

right above its fence; fragments are not run, and there may be only a few.
Blocks that start servers bind 127.0.0.1 on port 0 and stop themselves.
The command-line exit-status table must match `socker_transports.cli.EXIT_STATUSES`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from socker_transports import cli
from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FRAGMENT_MARKER = "<!-- readme-test: fragment -->"
MAX_FRAGMENTS = 2


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    fragment: bool


def python_blocks(text: str) -> list[Block]:
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index
            index += 1
            body = []
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            fragment = start > 0 and lines[start - 1].strip() == FRAGMENT_MARKER
            blocks.append(Block(start + 1, "\n".join(body) + "\n", fragment))
        index += 1
    return blocks


def check_servers_bind_loopback_port_0(block: Block) -> None:
    """A block that starts a server binds 127.0.0.1 on port 0 (no fixed port, no
    other interface), so it can run anywhere, any number of times at once."""
    for call in re.finditer(r"\bserve\(([^)]*)\)", block.code):
        assert '"127.0.0.1", 0' in call.group(1), f"line {block.line}: bind 127.0.0.1 port 0"


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks_and_few_fragments() -> None:
    assert len(BLOCKS) >= 5
    assert sum(block.fragment for block in BLOCKS) <= MAX_FRAGMENTS


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if not b.fragment], ids=lambda b: f"README.md:{b.line}"
)
def test_block_runs(block: Block, tmp_path: Path) -> None:
    check_servers_bind_loopback_port_0(block)
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=deadline(60),
    )
    assert done.returncode == 0, f"README.md:{block.line}\n{done.stdout}\n{done.stderr}"


def test_the_exit_status_table_matches_the_cli() -> None:
    text = README.read_text()
    # Only the command line's own section: other tables (HTTP statuses) have numbers too.
    section = text.split("\n## The command line", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE))
    statuses = {int(code): meaning for code, meaning in rows.items() if int(code) < 1000}
    assert set(statuses) == set(cli.EXIT_STATUSES)
