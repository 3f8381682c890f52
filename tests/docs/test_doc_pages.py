"""The documentation site's code runs and its generated tables are complete.

- Every ```python block of docs/**/*.md that is not a `--8<--` include runs on
  its own (as the README's do: tests/test_readme.py); the includes come from
  files that run here too (examples/tutorial_game.py) or have their own tests.
- The MkDocs hook's tables hold every close code, every `Options` field and
  every exit status. (`make test` builds the site with `mkdocs build --strict`.)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from socker_core import CLOSE_CODES
from socker_transports.cli import EXIT_STATUSES
from socker_transports.wire import Options
from tests.test_readme import Block, check_servers_bind_loopback_port_0, python_blocks
from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def doc_blocks() -> list[tuple[str, Block]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in python_blocks(page.read_text()):
            if "--8<--" not in block.code and not block.fragment:
                found.append((f"{page.relative_to(ROOT)}:{block.line}", block))
    return found


BLOCKS = doc_blocks()


def test_the_docs_have_runnable_blocks() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_doc_block_runs(where: str, block: Block, tmp_path: Path) -> None:
    check_servers_bind_loopback_port_0(block)
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=deadline(60),
    )
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"


def test_the_tutorial_program_runs() -> None:
    done = subprocess.run(
        [sys.executable, "examples/tutorial_game.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=deadline(60),
    )
    assert done.returncode == 0, done.stderr
    assert "| closed 1000 'flow complete' |" in done.stdout
    assert done.stdout.rstrip().endswith("client ended: 1000 flow complete")


def test_every_tutorial_include_exists() -> None:
    source = (ROOT / "examples" / "tutorial_game.py").read_text()
    for page in DOCS.rglob("*.md"):
        for line in page.read_text().splitlines():
            if line.startswith('--8<-- "examples/tutorial_game.py:'):
                section = line.split(":", 1)[1].rstrip('"')
                assert f"# --8<-- [start:{section}]" in source, (page, section)


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_are_complete() -> None:
    module = hooks()
    page = module.on_page_markdown(
        "<!-- table: close-codes -->\n\n<!-- table: limits -->\n\n<!-- table: exit-statuses -->"
    )
    for code in CLOSE_CODES:
        assert f"\n| {code} | " in page
    for field in dataclasses.fields(Options):
        assert f"\n| `{field.name}` | " in page
    for status in EXIT_STATUSES:
        assert f"\n| {status} | " in page
    with pytest.raises(ValueError, match="unknown table marker"):
        module.on_page_markdown("<!-- table: nonsense -->")
