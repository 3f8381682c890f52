"""The Prometheus exporter: after a scripted session, the metrics scraped from
/metrics (served by `http_handler` on the same port) match the counts the test
knows. Run on the anyio server and on the ASGI App in both ASGI stacks."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from socker_transports.metrics import PrometheusMetrics
from tests.asgi.harness_asgi import AsgiHarness
from tests.timing import deadline
from tests.transports.flows import (
    ANSWER_PREFIX,
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    make_game_client,
    make_game_server,
    make_greeter,
    make_sink,
)
from tests.transports.harness_anyio import AnyioHarness
from tests.transports.test_conformance import closed_code

HARNESSES: dict[str, Callable[[], Any]] = {
    "anyio-asyncio": lambda: AnyioHarness("anyio-asyncio", "asyncio", {}),
    "anyio-trio": lambda: AnyioHarness("anyio-trio", "trio", {}),
    "asgi-fastapi-uvicorn": lambda: AsgiHarness("asgi-fastapi-uvicorn"),
    "asgi-starlette-hypercorn": lambda: AsgiHarness("asgi-starlette-hypercorn"),
    "asgi-starlette-hypercorn-trio": lambda: AsgiHarness("asgi-starlette-hypercorn-trio"),
}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=deadline(5)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def closes_seen(metrics: PrometheusMetrics) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "socker_closes_total"
    )


@pytest.mark.parametrize("name", list(HARNESSES))
def test_scraped_metrics_match_a_scripted_session(name: str) -> None:
    harness = HARNESSES[name]()
    metrics = PrometheusMetrics()
    routes = {"/game": make_game_server(), "/greet": make_greeter()}
    server = harness.start_server(routes, on_event=metrics, http_handler=metrics.http_handler)
    try:
        for _ in range(2):
            result = harness.run_client(
                server.url + "/game", make_game_client(), timeout=deadline(5)
            )
            assert result.ok, result
        with ws_connect(server.url + "/greet", open_timeout=deadline(5)) as ws:
            assert ws.recv(timeout=deadline(5)) == b"welcome"
            ws.send(b"close")
            assert closed_code(ws)[0] == 4000
        refused = harness.run_client(server.url + "/nowhere", make_sink(), timeout=deadline(5))
        assert refused.handshake_status == 404
        # The server reports a close once its side is over: wait for all three.
        limit = time.monotonic() + deadline(5)
        while closes_seen(metrics) < 3 and time.monotonic() < limit:
            time.sleep(0.005)
        port = server.url.rsplit(":", 1)[1]
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.stop()

    def value(metric: str, **labels: str) -> float:
        return samples.get((metric, tuple(sorted({"side": "server", **labels}.items()))), 0.0)

    assert value("socker_open_connections") == 0
    assert value("socker_handshakes_total", status="101") == 3
    assert value("socker_handshakes_total", status="404") == 1
    assert value("socker_closes_total", code="1000") == 2
    assert value("socker_closes_total", code="4000") == 1
    for step in ("hello", "handshake", "answer", "control"):
        assert value("socker_step_transitions_total", flow="game-server", step=step) == 2
    assert value("socker_step_transitions_total", flow="greeter", step="echo") == 1
    game_in = [b"hi p1", b"ready", ANSWER_PREFIX + b"v=0 o=client", b"spawn", b"bye"]
    game_out = [SCENE, OFFER, CONNECTED, SPAWNED]
    assert value("socker_messages_total", direction="in") == 2 * len(game_in) + 1
    assert value("socker_messages_total", direction="out") == 2 * len(game_out) + 1
    assert value("socker_message_bytes_total", direction="in") == 2 * sum(map(len, game_in)) + len(
        b"close"
    )
    assert value("socker_message_bytes_total", direction="out") == 2 * sum(
        map(len, game_out)
    ) + len(b"welcome")
    for step, calls in (("hello", 2), ("handshake", 2), ("answer", 2), ("control", 4)):
        count = value("socker_handler_duration_seconds_count", flow="game-server", step=step)
        assert count == calls, step
    assert value("socker_handler_duration_seconds_count", flow="greeter", step="echo") == 1
    assert value("socker_handler_failures_total", flow="game-server", step="hello") == 0
