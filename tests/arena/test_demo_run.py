"""`make demo`'s command, as a user runs it: server and bots in their own processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
#: What `make demo` runs (the Makefile: `$(BIN)/python -m socker_transports demo`).
DEMO = [sys.executable, "-m", "socker_transports", "demo"]
#: Plain HTTP to 127.0.0.1 only: never through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_demo(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [*DEMO, "--timeout", str(deadline(55)), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=deadline(80),
    )
    return done.returncode, done.stdout + done.stderr


def test_make_demo_bots_play_and_one_resumes() -> None:
    code, out = run_demo()
    lines = out.rstrip().splitlines()
    for name in ("bot-1", "bot-2", "bot-3", "bot-4"):
        assert re.search(rf"\+ {name} joined the match \(bot, slot \d\)", out), out
    assert re.search(r"ticks \d+\.\d/s, players 4", out), out
    assert "chat bot-3: hello from bot-3" in out, out  # chat goes to the match room
    assert re.search(r"bot-2 +dc +\d+\.\d states/s +loss +\d+\.\d %", out), out
    assert "x bot-1: websocket cut at step 'control'" in out, out
    assert "[ok] every bot joined (4/4)" in out, out
    assert "[ok] every bot saw the others move" in out, out
    figures = ("ticks per second held", "data-channel states/s/player", "input -> echo latency")
    for figure in figures:
        assert figure in out, out
    assert "~ bot-1: RESUMED at step 'control'" in out, out
    assert "[ok] bot-1 resumed where cut (step 'control', once)" in out, out
    assert "[ok] every player left with 1000" in out, out
    assert lines[-1] == "players 4 (4 bots), resumed 1, closed 1000 4", out
    assert code == 0, out


def test_demo_without_the_cut_passes_every_check() -> None:
    code, out = run_demo("--bots", "3", "--seconds", "5", "--no-cut")
    assert code == 0, out
    assert "[ok] every player left with 1000" in out, out
    assert out.rstrip().splitlines()[-1] == "players 3 (3 bots), resumed 0, closed 1000 3", out


def test_demo_serve_serves_the_page_and_adds_bots() -> None:
    proc = subprocess.Popen(
        [*DEMO, "--serve", "--port", "0", "--bots", "1"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        end = time.monotonic() + deadline(30)
        line = ""
        while "socker demo page" not in line and time.monotonic() < end:
            line = proc.stdout.readline()
            assert line, "the demo server exited early"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with OPENER.open(url.group(0), timeout=deadline(10)) as page:
            assert page.headers["Content-Type"].startswith("text/html")
            assert b'src="./arena.js"' in page.read()
        with OPENER.open(url.group(0) + "arena.js", timeout=deadline(10)) as js:
            assert b'from "./socker.js"' in js.read()
        with OPENER.open(url.group(0) + "socker.js", timeout=deadline(10)) as js:
            assert b"export class Flow" in js.read()
        while "[server] joined" not in line and time.monotonic() < end:
            line = proc.stdout.readline()
            assert line, "the demo server exited early"
        assert "'name': 'bot-1'" in line and "'bot': True" in line, line
        proc.send_signal(signal.SIGTERM)  # a graceful stop: the bot is told 1001
        out, _ = proc.communicate(timeout=deadline(15))
        assert proc.returncode == 0, out
        assert re.search(r"\[server\] left .*'name': 'bot-1'.*'code': 1001", out), out
        assert "socker demo: server stopped" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
