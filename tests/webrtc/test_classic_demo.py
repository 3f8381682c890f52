"""`socker demo --classic` (the original single-handshake demo), as a user runs it:
two processes, a bounded run, exit 0."""

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
#: Plain HTTP to 127.0.0.1 only: never through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        # The demo's own wait for each reply (5 s) scaled like every wait in the tests.
        [
            *(sys.executable, "-m", "socker_transports.classic_demo", "--rounds", "200"),
            *("--patience", str(deadline(20))),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=deadline(90),
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.rstrip().endswith("demo OK")
    header = out.splitlines()[2]
    assert header.startswith("Server") and header.rstrip().endswith("| Client")
    # Rows appear in handshake order, each in its column.
    order = [
        r"^sends buffered scene: 40 entities, 320\.0 KiB",
        r"^ +\| creates scene: 40 entities",
        r"^ +\| sends handshake",
        r"^gets handshake: creates peer connection",
        r"^ +\| gets offer: sets remote description",
        r"^sets remote description from the client's",
        r"^ +\| data channel: 200/200 game-state round trips",
        r"^ +\| control: leaves the game",
        r"^control: player 'you' left after 200 inputs",
    ]
    position = 0
    for pattern in order:
        match = re.compile(pattern, re.M).search(out, position)
        assert match, f"{pattern!r} missing or out of order in:\n{out}"
        position = match.end()
    assert re.search(r"channel open +\d+\.\d ms \(client\)", out)
    assert re.search(r"round trips +200 in \d+\.\d+ s = \d+ round trips/s", out)
    assert "client -> server 200, server -> client 200" in out
    assert "server 1000 'flow complete', client 1000 'flow complete'" in out


def test_demo_serve_serves_the_page_and_socker_js() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "socker_transports.classic_demo", "--serve", "--port", "0"],
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
        while "http://" not in line and time.monotonic() < end:
            line = proc.stdout.readline()
            assert line, "the demo server exited early"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with OPENER.open(url.group(0), timeout=deadline(10)) as page:
            assert page.headers["Content-Type"].startswith("text/html")
            assert b'from "./socker.js"' in page.read()
        with OPENER.open(url.group(0) + "socker.js", timeout=deadline(10)) as js:
            assert js.headers["Content-Type"].startswith("text/javascript")
            assert b"export class Flow" in js.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=deadline(15)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
