"""socker flows mounted in real ASGI stacks, next to an ordinary HTTP route:
FastAPI under uvicorn and Starlette under hypercorn, on 127.0.0.1.

Every peer completes the 4-step game flow (tests/transports/flows.py) against the
mount: socker's anyio and threaded clients, the `websockets` client and Node's
`ws`. The HTTP route keeps working beside it, HTTP requests that reach the App get
`http_handler`'s answer (or 404), and `uvicorn mod:app` serves the App alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from websockets.sync.client import connect as ws_connect

from socker_transports.asgi import App
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.asgi.apps import HEALTH_BODY, starlette_app
from tests.asgi.harness_asgi import STACKS
from tests.asgi.servers import HypercornThread, ServerThread, UvicornThread, listening_socket
from tests.interop.test_node_ws import HERE as NODE_DIR
from tests.interop.test_node_ws import PEER, _result, node
from tests.timing import deadline
from tests.transports.flows import (
    ANSWER_PREFIX,
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    Log,
    make_game_client,
    make_game_server,
)
from tests.transports.harness_anyio import AnyioHarness
from tests.transports.harness_threaded import ThreadedHarness
from tests.transports.test_conformance import closed_code

__all__ = ["node"]


class Stack:
    def __init__(self, server: ServerThread, log: Log) -> None:
        self.server = server
        self.log = log
        self.game_url = f"{server.url}/game/"  # a Mount matches /game/ and below


@pytest.fixture(params=list(STACKS))
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    framework, server_type = STACKS[request.param]
    log = Log()
    app = App(make_game_server(log))
    server = server_type(framework({"/game": app}), [app]).start()
    try:
        yield Stack(server, log)
    finally:
        server.stop()


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=deadline(5)) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def assert_server_ended_normally(log: Log, player: str, remote: str) -> None:
    (end,) = log.wait_for(1, deadline(5))
    assert (end.flow, end.step, end.code, end.reason) == (
        "game-server",
        "control",
        1000,
        "flow complete",
    )
    assert end.state == {"player": player, "remote": remote}


@pytest.mark.parametrize(
    "client",
    [
        AnyioHarness("anyio-asyncio", "asyncio", {}),
        AnyioHarness("anyio-trio", "trio", {}),
        ThreadedHarness(),
    ],
    ids=lambda c: c.name,
)
def test_socker_clients_complete_the_game(stack: Stack, client: Any) -> None:
    client_log = Log()
    result = client.run_client(stack.game_url, make_game_client(client_log), timeout=deadline(5))
    assert (result.code, result.reason, result.handshake_status) == (1000, "flow complete", 101)
    (end,) = client_log.wait_for(1, deadline(5))
    assert end.state == {"scene": SCENE.decode(), "offer": OFFER.decode(), "spawned": True}
    assert_server_ended_normally(stack.log, "p1", "v=0 o=client")


def test_websockets_client_completes_the_game(stack: Stack) -> None:
    with ws_connect(stack.game_url, open_timeout=deadline(5), close_timeout=deadline(5)) as ws:
        ws.send(b"hi ws-player")
        assert ws.recv(timeout=deadline(5)) == SCENE
        ws.send(b"ready")
        assert ws.recv(timeout=deadline(5)) == OFFER
        ws.send(ANSWER_PREFIX + b"v=0 o=ws")
        assert ws.recv(timeout=deadline(5)) == CONNECTED
        ws.send(b"spawn")
        assert ws.recv(timeout=deadline(5)) == SPAWNED
        ws.send(b"bye")
        assert closed_code(ws) == (1000, "flow complete")
    assert_server_ended_normally(stack.log, "ws-player", "v=0 o=ws")


def test_node_ws_client_completes_the_game(stack: Stack, node: str) -> None:
    timeout = deadline(10)
    proc = subprocess.run(
        [node, str(PEER), "client", stack.game_url, str(int(timeout * 1000))],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout + deadline(5),
        check=False,
    )
    result = _result(proc.stdout)
    assert result["errors"] == [], (result, proc.stderr)
    assert (result["code"], result["reason"]) == (1000, "flow complete")
    assert result["received"] == [s.decode() for s in (SCENE, OFFER, CONNECTED, SPAWNED)]
    assert proc.returncode == 0, proc.stderr
    assert_server_ended_normally(stack.log, "node-player", "v=0 o=node")


def test_http_route_next_to_the_mount(stack: Stack) -> None:
    status, _, body = http_get(f"{stack.server.http_url}/health")
    assert (status, body) == (200, HEALTH_BODY.encode())
    # An HTTP request that reaches the App (no http_handler): 404.
    status, _, _ = http_get(f"{stack.server.http_url}/game/")
    assert status == 404
    assert stack.server.active_connections() == 0


@pytest.mark.parametrize(
    "server_type", [UvicornThread, HypercornThread], ids=["uvicorn", "hypercorn"]
)
def test_http_handler_answers_with_headers_and_sees_the_method(
    server_type: type[ServerThread],
) -> None:
    seen: list[HandshakeRequest] = []

    def http_handler(request: HandshakeRequest) -> HttpResponse | None:
        seen.append(request)
        if request.path == "/old":
            return HttpResponse(302, b"", headers=[("Location", "/game/")])
        if request.path == "/healthz":
            return HttpResponse(200, b"up\n", headers=[("Cache-Control", "no-store")])
        return None

    app = App(make_game_server(), http_handler=http_handler)
    server = server_type(starlette_app({"/game": app}), [app]).start()
    try:
        status, headers, body = http_get(f"{server.http_url}/game/healthz")
        assert (status, body, headers.get("cache-control")) == (200, b"up\n", "no-store")
        # urllib follows the redirect to /game/, which the handler leaves as 404.
        status, _, _ = http_get(f"{server.http_url}/game/old")
        assert status == 404
        status, _, body = http_get(f"{server.http_url}/game/healthz", method="HEAD")
        assert (status, body) == (200, b"")
    finally:
        server.stop()
    assert [(r.method, r.path) for r in seen] == [
        ("GET", "/healthz"),
        ("GET", "/old"),
        ("GET", "/"),
        ("HEAD", "/healthz"),
    ]


@pytest.mark.parametrize(
    "server_type", [UvicornThread, HypercornThread], ids=["uvicorn", "hypercorn"]
)
def test_exact_path_route_and_path_mapping(server_type: type[ServerThread]) -> None:
    """A WebSocketRoute serves the exact path; a mapping routes below a Mount,
    with paths relative to the mount point (root_path)."""
    log = Log()
    exact = App(make_game_server(log))
    mapped = App({"/lobby": make_game_server(log)})
    framework = Starlette(routes=[WebSocketRoute("/play", exact)])
    framework.routes.append(Mount("/rooms", app=mapped))
    server = server_type(framework, [exact, mapped]).start()
    try:
        client = AnyioHarness("anyio-asyncio", "asyncio", {})
        for url in (f"{server.url}/play", f"{server.url}/rooms/lobby"):
            result = client.run_client(url, make_game_client(), timeout=deadline(5))
            assert (result.code, result.handshake_status) == (1000, 101), url
        result = client.run_client(
            f"{server.url}/rooms/hall", make_game_client(), timeout=deadline(5)
        )
        assert result.handshake_status == 404
    finally:
        server.stop()
    assert [e.code for e in log.wait_for(2, deadline(5))] == [1000, 1000]


def test_uvicorn_serves_the_app_alone() -> None:
    """`uvicorn tests.asgi.apps:standalone` in its own process (lifespan on)."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.asgi.apps:standalone", "--fd", str(sock.fileno())],
        pass_fds=[sock.fileno()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = AnyioHarness("anyio-asyncio", "asyncio", {}).run_client(
            f"ws://127.0.0.1:{port}/any/path", make_game_client(), timeout=deadline(15)
        )
        assert (result.code, result.reason, result.handshake_status) == (1000, "flow complete", 101)
        status, _, _ = http_get(f"http://127.0.0.1:{port}/")
        assert status == 404
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=deadline(10))
        sock.close()
    assert "Application startup complete" in output, output
    assert "Traceback" not in output, output
