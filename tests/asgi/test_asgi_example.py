"""examples/fastapi_app.py under a real uvicorn: the game flow at /game/, the
health route, and socker's metrics at /game/metrics."""

from __future__ import annotations

import json
import urllib.request

from examples.fastapi_app import api, game
from examples.game_flows import client
from tests.asgi.servers import UvicornThread
from tests.timing import deadline
from tests.transports.harness_anyio import AnyioHarness


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=deadline(5)) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body


def test_fastapi_example() -> None:
    server = UvicornThread(api, [game]).start()
    try:
        result = AnyioHarness("anyio-asyncio", "asyncio", {}).run_client(
            f"{server.url}/game/", client, timeout=deadline(5)
        )
        assert (result.code, result.handshake_status) == (1000, 101)
        assert json.loads(get(f"{server.http_url}/health")) == {"status": "ok", "players": "0"}
        text = get(f"{server.http_url}/game/metrics").decode()
    finally:
        server.stop()
    assert 'socker_closes_total{code="1000",side="server"} 1.0' in text
    assert 'socker_handshakes_total{side="server",status="101"} 1.0' in text
