"""The `socker` command line: serve (with graceful SIGINT/SIGTERM), connect's exit
statuses, graph, and the option spellings."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from socker_transports import cli
from socker_transports.wire import Options
from tests.timing import deadline
from tests.transports.flows import SCENE, make_waiter, routes
from tests.transports.harness_anyio import AnyioHarness

ROOT = Path(__file__).resolve().parents[2]


def socker(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socker_transports", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=deadline(timeout),
    )


class ServeProcess:
    """`socker serve ...` in a subprocess; `url` once it printed its ws:// line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socker_transports", "serve", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_for_url(self) -> str:
        while True:
            try:
                line = self.lines.get(timeout=deadline(15))
            except queue.Empty:
                raise AssertionError("socker serve printed no ws:// line in time") from None
            if line is None:
                self.proc.wait(deadline(5))
                assert self.proc.stderr is not None
                raise AssertionError(f"socker serve exited: {self.proc.stderr.read()}")
            for word in line.split():
                if word.startswith(("ws://", "wss://")):
                    return word

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(deadline(10))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(deadline(5))
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


@pytest.mark.parametrize(
    ("driver_args", "sig"),
    [
        (("--backend", "asyncio"), signal.SIGINT),
        (("--backend", "trio"), signal.SIGTERM),
        (("--driver", "threaded"), signal.SIGINT),
    ],
    ids=["asyncio-SIGINT", "trio-SIGTERM", "threaded-SIGINT"],
)
def test_serve_runs_flows_and_shuts_down_gracefully(
    serve_process: type[ServeProcess], driver_args: tuple[str, ...], sig: int
) -> None:
    server = serve_process(
        "tests.transports.flows:game_server", "--close-timeout", "2", *driver_args
    )
    assert server.url.startswith("ws://127.0.0.1:")
    # A whole client flow, through `socker connect`.
    done = socker("connect", server.url, "tests.transports.flows:game_client")
    assert done.returncode == 0, done.stderr
    # A live connection when the signal arrives sees 1001.
    with ws_connect(server.url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
        ws.send(b"hi live")
        assert ws.recv(timeout=deadline(5)) == SCENE
        assert server.stop(sig) == 0
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=deadline(5))
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "server shutting down")


def test_serve_routes_and_limits(serve_process: type[ServeProcess]) -> None:
    server = serve_process("tests.transports.flows:routes", "--max-size", "64")
    with ws_connect(server.url + "/greet", open_timeout=deadline(5)) as ws:
        assert ws.recv(timeout=deadline(5)) == b"welcome"
        ws.send(b"x" * 65)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=deadline(5))
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert server.stop() == 0


@pytest.fixture(scope="module")
def background_server() -> Iterator[str]:
    """An in-process server (no subprocess start-up) with every path the
    connect tests need."""
    harness = AnyioHarness("anyio-asyncio", "asyncio", {})
    server = harness.start_server({**routes, "/slow": make_waiter(timeout=0.3)})
    try:
        yield server.url
    finally:
        server.stop()


def test_connect_exit_zero_on_completion(background_server: str) -> None:
    done = socker("connect", background_server + "/game", "tests.transports.flows:game_client")
    assert (done.returncode, done.stderr) == (0, "")


def test_connect_reports_a_close_code(background_server: str) -> None:
    done = socker("connect", background_server + "/slow", "tests.transports.flows:sink")
    assert done.returncode == cli.EXIT_CLOSED
    assert "4408" in done.stderr and "timed out" in done.stderr


def test_connect_reports_a_rejected_handshake(background_server: str) -> None:
    done = socker(
        "connect",
        background_server + "/nowhere",
        "tests.transports.flows:sink",
        "--backend",
        "trio",
    )
    assert done.returncode == cli.EXIT_HANDSHAKE
    assert "HTTP 404" in done.stderr


def test_connect_unreachable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        done = socker("connect", f"ws://127.0.0.1:{port}/", "tests.transports.flows:sink")
    assert done.returncode == cli.EXIT_NETWORK
    assert "cannot connect" in done.stderr


def test_graph_prints_mermaid() -> None:
    done = socker("graph", "tests.transports.flows:game_server")
    assert done.returncode == 0
    assert done.stdout.startswith("stateDiagram-v2")
    for step in ("hello", "handshake", "answer", "control"):
        assert f'state "{step}"' in done.stdout


# -- in-process: argument handling -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["graph", "no_colon"], "expected MODULE:ATTR"),
        (["graph", "tests.transports.nope:flow"], "cannot import module"),
        (["graph", "tests.transports.flows:missing"], "has no attribute"),
        (["graph", "tests.transports.flows:not_a_flow"], "not a Flow or a mapping"),
        (["connect", "ws://127.0.0.1:1/", "tests.transports.flows:routes"], "not a socker Flow"),
    ],
)
def test_bad_targets_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_bad_option_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "tests.transports.flows:game_server", "--max-queue", "0"])
    assert info.value.code == cli.EXIT_USAGE
    assert "max_queue" in capsys.readouterr().err


def test_every_option_has_a_flag() -> None:
    parser = cli.build_parser()
    ns = parser.parse_args(
        [
            "serve",
            "m:a",
            "--max-size",
            "none",
            "--max-queue",
            "3",
            "--open-timeout",
            "1.5",
            "--close-timeout",
            "2",
            "--ping-interval",
            "none",
            "--ping-timeout",
            "4",
            "--max-line",
            "1000",
            "--max-headers",
            "10",
            "--origin",
            "https://a.example",
            "--origin",
            "https://b.example",
            "--allow-no-origin",
            "--subprotocol",
            "game.v1",
            "--accept-text",
            "--write-limit",
            "100",
            "--max-send-buffer",
            "1000",
            "--max-fragments",
            "64",
            "--compression",
            "deflate",
            "--server-no-context-takeover",
            "--client-no-context-takeover",
        ]
    )
    given = cli.options_from(ns)
    # Options added by the hostile-peers work (issue 14) whose flags cli.py (owned
    # elsewhere) does not have yet: remove from this set as the flags land.
    no_flag_yet = {"frames_per_turn", "linger_timeout", "linger_bytes", "max_connections"}
    assert set(given) == {f.name for f in dataclasses.fields(Options)} - no_flag_yet
    options = Options(**given)
    assert options.max_size is None and options.ping_interval is None
    assert options.open_timeout == 1.5 and options.max_queue == 3
    assert list(options.origins or ()) == ["https://a.example", "https://b.example", None]
    assert options.subprotocols == ("game.v1",) and options.accept_text
    assert options.max_fragments == 64 and options.compression == "deflate"
    assert options.server_no_context_takeover and options.client_no_context_takeover
    assert cli.options_from(parser.parse_args(["serve", "m:a"])) == {}


def test_threaded_driver_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "socker_transports.threaded", None)  # import fails
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "tests.transports.flows:game_server", "--driver", "threaded"])
    assert info.value.code == cli.EXIT_USAGE
    assert "threaded driver is not available" in capsys.readouterr().err


def test_backend_with_threaded_driver_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(
            [
                "connect",
                "ws://127.0.0.1:1/",
                "tests.transports.flows:sink",
                "--driver",
                "threaded",
                "--backend",
                "trio",
            ]
        )
    assert info.value.code == cli.EXIT_USAGE


def test_console_script_entry_point() -> None:
    from socker_transports.__main__ import main

    assert main is cli.main
    assert os.path.exists(ROOT / "socker_transports" / "__main__.py")
