"""A new user's install, for real: the built wheel in fresh virtual environments.

The wheel is built from this checkout (`pip wheel --no-build-isolation`, the
build backend from the dev environment), and installed with
`pip install --no-index --find-links` from a wheelhouse that holds only it and
the dependencies repacked from the dev environment (tests/packaging/wheelhouse.py),
so no index is asked and the result is the same every run. Three environments:

- bare: the wheel with `--no-deps`: `socker_core` imports and runs a flow with
  nothing else installed, and the transports say what is missing;
- default (`pip install socker-steps`): `socker --help`, then `socker serve` and
  `socker connect` against each other on 127.0.0.1; `socker demo` names the
  webrtc extra in one line;
- webrtc (`pip install 'socker-steps[webrtc]'`): `socker demo` runs end to end.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.wheelhouse import build_wheelhouse
from tests.timing import deadline

if sys.version_info >= (3, 11):
    import tomllib
else:  # in the dev extra on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DISTRIBUTION = PROJECT["name"]
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "socker_core" / "_version.py").read_text()
).group(1)  # type: ignore[union-attr]

FLOWS = """
from socker_core import Close, Flow

server = Flow("hello-server")

@server.on_open
def hello(conn):
    conn.send(b"hello")

@server.step
def answer(conn, message):
    return Close(1000, "bye") if message == b"thanks" else False

client = Flow("hello-client")

@client.step
def greeted(conn, message):
    conn.send(b"thanks")
    return False
"""


def run(
    *args: str | Path, timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=deadline(timeout),
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def clean_env() -> dict[str, str]:
    """The environment without anything that would make the dev packages visible."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"
    return env


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--wheel-dir",
        house,
        ROOT,
        timeout=180,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert len(list(house.glob("socker_steps-*.whl"))) == 1
    requirements = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["webrtc"]]
    build_wheelhouse(requirements, house)
    return house


def make_venv(where: Path, wheelhouse: Path, *requirements: str, no_deps: bool = False) -> Path:
    """A fresh virtual environment (no system site-packages) with `requirements`
    installed from the wheelhouse only; returns its bin folder."""
    created = run(sys.executable, "-m", "venv", "--without-pip", where)
    assert created.returncode == 0, created.stderr
    python = where / "bin" / "python"
    installed = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-index",
        "--find-links",
        wheelhouse,
        "--no-cache-dir",
        "--disable-pip-version-check",
        *(["--no-deps"] if no_deps else []),
        *requirements,
        timeout=300,
        env=clean_env(),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return where / "bin"


def installed_names(bin_dir: Path) -> set[str]:
    done = run(
        bin_dir / "python",
        "-c",
        "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])",
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    return {name.lower().replace("_", "-") for name in done.stdout.split()}


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello_flows.py").write_text(FLOWS)
    return tmp_path


def test_bare_install_socker_core_needs_nothing(
    tmp_path: Path, wheelhouse: Path, flows_dir: Path
) -> None:
    bin_dir = make_venv(tmp_path / "bare", wheelhouse, DISTRIBUTION, no_deps=True)
    assert installed_names(bin_dir) == {DISTRIBUTION}
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import socker_core, socker_core.testing\n"
        "from hello_flows import server, client\n"
        "t = socker_core.testing.run_pair(server, client)\n"
        "assert t.server_code == 1000, t.table()\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(n for n in new if n not in sys.stdlib_module_names))\n"
        "print(socker_core.__version__)\n"
    )
    done = run(bin_dir / "python", "-c", probe, cwd=flows_dir, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['hello_flows', 'socker_core']", VERSION]
    missing = run(bin_dir / "python", "-c", "import socker_transports", env=clean_env())
    assert missing.returncode == 1 and "No module named 'wsproto'" in missing.stderr


class Serving:
    """`socker serve` from the fresh environment, until it printed its ws:// URL."""

    def __init__(self, bin_dir: Path, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(bin_dir / "socker"), "serve", "hello_flows:server", "--port", "0"],
            cwd=cwd,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._url()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _url(self) -> str:
        line = self.lines.get(timeout=deadline(30))
        assert line is not None, self.proc.stderr.read() if self.proc.stderr else ""
        return next(word for word in line.split() if word.startswith("ws://"))

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(deadline(15))
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def default_env(tmp_path: Path, wheelhouse: Path) -> Iterator[Path]:
    bin_dir = make_venv(tmp_path / "default", wheelhouse, DISTRIBUTION)
    yield bin_dir


def test_default_install_gives_a_working_command(default_env: Path, flows_dir: Path) -> None:
    names = installed_names(default_env)
    assert {DISTRIBUTION, "wsproto", "anyio"} <= names
    assert "aiortc" not in names and "trio" not in names

    helped = run(default_env / "socker", "--help", env=clean_env())
    assert helped.returncode == 0, helped.stderr
    assert "exit statuses:" in helped.stdout and DISTRIBUTION in helped.stdout

    server = Serving(default_env, flows_dir)
    try:
        assert server.url.startswith("ws://127.0.0.1:")
        done = run(
            default_env / "socker",
            "connect",
            server.url,
            "hello_flows:client",
            cwd=flows_dir,
            env=clean_env(),
            timeout=30,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith(f"socker: {server.url}: flow 'hello-client' ended 1000 'bye'")
    finally:
        assert server.stop() == 0

    demo = run(default_env / "socker", "demo", env=clean_env(), timeout=30)
    assert (demo.returncode, demo.stdout) == (2, "")
    assert demo.stderr == (
        f"socker: error: socker demo needs the webrtc extra: pip install '{DISTRIBUTION}[webrtc]'\n"
    )


def test_webrtc_extra_runs_the_demo(tmp_path: Path, wheelhouse: Path) -> None:
    bin_dir = make_venv(tmp_path / "webrtc", wheelhouse, f"{DISTRIBUTION}[webrtc]")
    assert {"aiortc", "aioice"} <= installed_names(bin_dir)
    # The arena (the README's main job), short: two bots, one cut and resumed.
    done = run(
        bin_dir / "socker",
        "demo",
        "--bots",
        "2",
        "--seconds",
        "4",
        "--timeout",
        "60",
        env=clean_env(),
        timeout=90,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("players 2 (2 bots), resumed 1, closed 1000 2")
