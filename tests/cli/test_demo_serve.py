"""`socker demo --classic --serve` stops gracefully on SIGTERM and SIGINT, as
`socker serve` does: a connected client sees 1001 and the process exits 0 (the
arena's `--serve` is tested in tests/arena)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.timing import deadline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_serve_stops_gracefully(sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "socker_transports", "demo", "--classic", "--serve", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=deadline(20))
        assert line is not None and line.startswith("socker demo page: http://127.0.0.1:"), line
        page = line.split()[3]
        ws_url = page.replace("http://", "ws://") + "game"
        with ws_connect(ws_url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
            assert ws.recv(timeout=deadline(5))[:1] == b"S"  # the first scene chunk
            proc.send_signal(sig)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=deadline(10))
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "server shutting down")
        assert proc.wait(deadline(15)) == 0
        rest = []
        while (item := lines.get(timeout=deadline(5))) is not None:
            rest.append(item)
        assert "socker demo: server stopped\n" in rest
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(deadline(5))
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
