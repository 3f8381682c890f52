"""`socker serve --engine URL` and `workers.run(engine=)`: a bad URL is a usage error
before anything starts, an unreachable Redis fails the start with exit status 4, and
`--engine memory://` serves rooms through the in-process engine. (Two `socker serve
--engine redis://...` machines sharing one Redis: test_cluster.py.)"""

from __future__ import annotations

import json
import signal
import socket

import pytest
from websockets.sync.client import connect as ws_connect

from socker_transports import cli, workers
from tests.cli.test_cli_errors import socker
from tests.timing import deadline
from tests.transports.test_workers import Supervised

FLOW = "examples.cluster_room:flow"


def test_an_unknown_engine_url_is_a_usage_error() -> None:
    done = socker("serve", FLOW, "--port", "0", "--engine", "nope://x")
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    assert "--engine: unknown engine URL 'nope://x'" in done.stderr
    done = socker("serve", FLOW, "--port", "0", "--engine", "redis://127.0.0.1:1/0?timeout=x")
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    assert "engine URL option timeout='x'" in done.stderr


def test_workers_run_checks_the_engine_before_forking() -> None:
    with pytest.raises(ValueError, match="unknown engine URL"):
        workers.run(cli.load_flow(FLOW), workers=2, port=0, engine="nope://x")
    with pytest.raises(TypeError, match="a URL"):
        workers.run(cli.load_flow(FLOW), workers=2, port=0, engine=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("driver", ["anyio", "threaded"])
def test_an_unreachable_redis_fails_the_start(driver: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0?timeout=0.5"
    done = socker("serve", FLOW, "--port", "0", "--driver", driver, "--engine", url)
    assert done.returncode == cli.EXIT_NETWORK, done.stderr
    assert f"cannot start the engine {url}" in done.stderr


def test_serve_with_the_memory_engine() -> None:
    machine = Supervised(
        *("-m", "socker_transports", "serve", FLOW, "--port", "0", "--engine", "memory://")
    )
    try:
        with ws_connect(machine.url, open_timeout=deadline(5)) as ws:
            hello = json.loads(ws.recv(timeout=deadline(5)))
            ws.send(b"who")
            assert ws.recv(timeout=deadline(5)) == b"who:" + json.dumps([hello["member"]]).encode()
            ws.send(b"say:hello")
            assert ws.recv(timeout=deadline(5)) == b"hello"
    finally:
        machine.proc.send_signal(signal.SIGTERM)
        assert machine.proc.wait(deadline(20)) == 0
        machine.kill()
