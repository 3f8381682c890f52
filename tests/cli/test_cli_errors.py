"""The `socker` command as a user meets it: one line per mistake with a documented
exit status, -v/-vv anywhere, no traceback unless -vv, a quiet closed pipe, the
connect summary, and the missing-extra messages. Each message is quoted in full."""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from socker_transports import cli
from tests.timing import deadline
from tests.transports.flows import routes
from tests.transports.harness_anyio import AnyioHarness

ROOT = Path(__file__).resolve().parents[2]
GAME_SERVER = "tests.transports.flows:game_server"


def socker(
    *args: str, cwd: Path = ROOT, prelude: str = "", timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run the command in a fresh interpreter; `prelude` runs first (to hide a module)."""
    code = f"import sys\n{prelude}\nfrom socker_transports.cli import main\nsys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline(timeout),
    )


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("socker")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    harness = AnyioHarness("anyio-asyncio", "asyncio", {})
    server = harness.start_server(routes)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def user_modules(tmp_path: Path) -> Path:
    """A folder holding user modules that fail in different ways."""
    (tmp_path / "dupe.py").write_text(
        textwrap.dedent(
            """
            from socker_core import Flow

            flow = Flow("dupe")
            flow.add(lambda conn, message: True, name="a")
            flow.add(lambda conn, message: True, name="a")
            """
        )
    )
    (tmp_path / "boom.py").write_text("flow = 1 / 0\n")
    (tmp_path / "empty.py").write_text(
        "from socker_core import Flow\n\nflow = Flow('empty')\nroutes = {'/a': flow}\n"
    )
    return tmp_path


# -- usage errors: one line, exit 2 ----------------------------------------------------


def test_an_http_url_is_a_usage_error() -> None:
    done = socker("connect", "http://127.0.0.1:1/", "tests.transports.flows:sink")
    assert done.returncode == 2 == cli.EXIT_USAGE
    assert (
        done.stderr
        == "socker: error: not a websocket URL (ws:// or wss://): 'http://127.0.0.1:1/'\n"
    )


def test_a_flow_that_fails_to_define_is_one_line(user_modules: Path) -> None:
    done = socker("graph", "dupe:flow", cwd=user_modules)
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr == (
        "socker: error: importing 'dupe' failed (a flow in it fails to define): "
        "FlowDefinitionError: flow 'dupe' already has a step named 'a'\n"
    )


def test_a_module_that_raises_is_one_line_and_vv_shows_the_traceback(
    user_modules: Path,
) -> None:
    done = socker("graph", "boom:flow", cwd=user_modules)
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr == (
        "socker: error: importing 'boom' failed (it raised): ZeroDivisionError: division by zero\n"
    )
    loud = socker("-vv", "graph", "boom:flow", cwd=user_modules)
    assert loud.returncode == cli.EXIT_USAGE
    assert "Traceback (most recent call last)" in loud.stderr
    assert "ZeroDivisionError: division by zero" in loud.stderr
    assert loud.stderr.endswith(
        "socker: error: importing 'boom' failed (it raised): ZeroDivisionError: division by zero\n"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve", "empty:flow"],
            "socker: error: empty:flow cannot run: flow 'empty' has no steps",
        ),
        (
            ["connect", "ws://127.0.0.1:1/", "empty:flow"],
            "socker: error: empty:flow cannot run: flow 'empty' has no steps",
        ),
        (
            ["serve", "empty:routes"],
            "socker: error: empty:routes['/a'] cannot run: flow 'empty' has no steps",
        ),
    ],
)
def test_a_flow_that_cannot_run_is_a_usage_error(
    args: list[str], line: str, user_modules: Path
) -> None:
    done = socker(*args, cwd=user_modules)
    assert (done.returncode, done.stderr) == (cli.EXIT_USAGE, line + "\n")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve"],
            "socker serve: error: the following arguments are required: MODULE:ATTR "
            "(see socker serve --help)",
        ),
        (
            ["serve", GAME_SERVER, "--port", "70000"],
            "socker serve: error: argument --port: port must be 0-65535, got 70000 "
            "(see socker serve --help)",
        ),
        (
            ["launch"],
            "socker: error: argument COMMAND: invalid choice: 'launch' (choose from serve, "
            "connect, graph, demo) (see socker --help)",
        ),
        (
            ["serve", GAME_SERVER, "--max-queue", "0"],
            "socker: error: max_queue must be at least 1, got 0",
        ),
        (
            ["serve", GAME_SERVER, "--ssl-certfile", "missing.pem"],
            "socker: error: cannot load the certificate 'missing.pem': "
            "[Errno 2] No such file or directory",
        ),
        (
            ["connect", "ws://127.0.0.1:1/", "tests.transports.flows:sink", "--ssl-cafile", "x"],
            "socker: error: --ssl-cafile needs a wss:// URL",
        ),
        (
            ["serve", GAME_SERVER, "--max-size", "abc"],
            "socker serve: error: argument --max-size: expected an integer or 'none', "
            "got 'abc' (see socker serve --help)",
        ),
        (
            ["serve", GAME_SERVER, "--max-queue", "many"],
            "socker serve: error: argument --max-queue: expected an integer, got 'many' "
            "(see socker serve --help)",
        ),
        (
            ["connect", "ws://127.0.0.1:99999/", "tests.transports.flows:sink"],
            "socker: error: bad URL 'ws://127.0.0.1:99999/': Port out of range 0-65535",
        ),
        (
            ["demo", "--bots", "1"],
            "socker demo: error: --bots must be at least 2 (they must see each other) and "
            "--seconds positive (see socker demo --help)",
        ),
        (
            ["demo", "--classic", "--rounds", "0"],
            "socker demo --classic: error: --rounds and --scene-kib must be positive "
            "(see socker demo --classic --help)",
        ),
        (
            ["demo", "--classic", "--patience", "0"],
            "socker demo --classic: error: --patience must be positive seconds "
            "(see socker demo --classic --help)",
        ),
        (
            ["-v", "demo", "--bogus"],
            "socker demo: error: unrecognized arguments: --bogus (see socker demo --help)",
        ),
        (
            ["demo", "-vv", "--classic", "--rounds", "0"],  # -v after demo is socker's
            "socker demo --classic: error: --rounds and --scene-kib must be positive "
            "(see socker demo --classic --help)",
        ),
        (
            ["graph", "no_colon"],
            "socker: error: expected MODULE:ATTR (like game.flows:server), got 'no_colon'",
        ),
        (
            ["graph", "tests.transports.flows:missing"],
            "socker: error: module 'tests.transports.flows' has no attribute 'missing'",
        ),
    ],
)
def test_usage_errors_are_one_line(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    # Python 3.12+ quotes argparse's choices; compare without the quotes around them.
    assert err.replace("'serve', 'connect', 'graph', 'demo'", "serve, connect, graph, demo") == (
        line + "\n"
    )


# -- missing extras --------------------------------------------------------------------


def test_demo_without_the_webrtc_extra_is_one_friendly_line() -> None:
    done = socker("demo", prelude="sys.modules['aiortc'] = None  # as if not installed")
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr == (
        "socker: error: socker demo needs the webrtc extra: pip install 'socker-steps[webrtc]'\n"
    )
    assert done.stdout == ""


def test_the_trio_backend_without_trio_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "trio", None)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", GAME_SERVER, "--backend", "trio"])
    assert info.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "socker: error: the trio backend needs the trio extra: pip install 'socker-steps[trio]'\n"
    )


# -- -v anywhere -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["graph", GAME_SERVER], logging.WARNING),
        (["-v", "graph", GAME_SERVER], logging.INFO),
        (["graph", GAME_SERVER, "-v"], logging.INFO),
        (["-v", "graph", "-v", GAME_SERVER], logging.DEBUG),
        (["-vv", "graph", GAME_SERVER], logging.DEBUG),
        (["graph", "-vv", GAME_SERVER], logging.DEBUG),
        (["--verbose", "graph", GAME_SERVER], logging.INFO),
    ],
)
def test_verbosity_before_or_after_the_command(
    args: list[str], level: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == cli.EXIT_OK
    assert logging.getLogger("socker").level == level
    assert capsys.readouterr().out.startswith("stateDiagram-v2")


def test_global_v_reaches_connect(server_url: str) -> None:
    done = socker("-v", "connect", server_url + "/game", "tests.transports.flows:game_client")
    assert done.returncode == 0, done.stderr
    assert " INFO socker" in done.stderr  # open/close are logged at INFO


# -- connect's summary, the closed pipe, internal errors -------------------------------


def test_connect_prints_one_summary_line(server_url: str) -> None:
    url = server_url + "/game"
    done = socker("connect", url, "tests.transports.flows:game_client")
    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(
        rf"socker: {re.escape(url)}: flow 'game-client' ended 1000 'flow complete' "
        r"in \d+\.\d\d s\n",
        done.stdout,
    ), done.stdout


def test_a_closed_pipe_is_quiet() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is already gone when graph writes
    try:
        done = subprocess.run(
            [sys.executable, "-m", "socker_transports", "graph", GAME_SERVER],
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=deadline(20),
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (cli.EXIT_BROKEN_PIPE, "")


def test_cannot_listen_is_exit_4() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = socker("serve", GAME_SERVER, "--port", str(port))
    assert done.returncode == cli.EXIT_NETWORK
    assert done.stderr.startswith(f"socker: error: cannot serve on 127.0.0.1:{port}: [Errno 98]")
    assert done.stderr.count("\n") == 1


def test_an_unexpected_error_is_one_line_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(ns: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_graph", broken)
    assert cli.main(["graph", GAME_SERVER]) == cli.EXIT_INTERNAL == 70
    assert capsys.readouterr().err == (
        "socker: error: internal error: RuntimeError: boom (socker -vv shows the traceback)\n"
    )


def test_help_shows_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit statuses:" in out
    for code in cli.EXIT_STATUSES:
        assert re.search(rf"^ +{code}  ", out, re.MULTILINE), code


def test_importing_webrtc_without_the_extra_names_it() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['aiortc'] = None\n"
            "try:\n"
            "    import socker_transports.webrtc\n"
            "except ModuleNotFoundError as exc:\n"
            "    print(exc)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=deadline(20),
    )
    assert done.stdout == (
        "socker_transports.webrtc needs the webrtc extra: pip install 'socker-steps[webrtc]'\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from socker_core import __version__

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"socker {__version__}\n"


def test_a_handler_that_raises_is_logged_on_one_line(tmp_path: Path) -> None:
    """A bug in the user's handler is logged by `socker serve` as one line (the
    connection closes with 1011); -vv shows the traceback."""
    (tmp_path / "buggy.py").write_text(
        textwrap.dedent(
            """
            from socker_core import Flow

            flow = Flow("buggy")

            @flow.step
            def divide(conn, message):
                return 1 / 0
            """
        )
    )
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    for verbosity, traceback_shown in (((), False), (("-vv",), True)):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "socker_transports",
                *verbosity,
                "serve",
                "buggy:flow",
                "--port=0",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], deadline(15))
            assert ready, "socker serve printed nothing in time"
            line = proc.stdout.readline()
            url = next(word for word in line.split() if word.startswith("ws://"))
            with ws_connect(url, open_timeout=deadline(5)) as ws:
                ws.send(b"x")
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=deadline(5))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            proc.terminate()
            _, err = proc.communicate(timeout=deadline(15))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=deadline(5))
        assert proc.returncode == 0, err
        assert ("Traceback (most recent call last)" in err) is traceback_shown, err
        if not traceback_shown:
            [failure] = [line for line in err.splitlines() if "ZeroDivisionError" in line]
            assert re.search(
                r" ERROR socker: server 127\.0\.0\.1:\d+: divide raised: "
                r"ZeroDivisionError: division by zero \(-vv for the traceback\)$",
                failure,
            ), failure


def test_v_after_demo_sets_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "-v", "--help"])
    assert info.value.code == 0
    assert logging.getLogger("socker").level == logging.INFO
    assert capsys.readouterr().out.startswith("usage: socker demo")
