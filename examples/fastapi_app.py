"""The game flow inside a FastAPI application, with a health check and metrics:

    uvicorn examples.fastapi_app:api --ws-per-message-deflate false
    socker connect ws://127.0.0.1:8000/game/ examples.game_flows:client
    curl http://127.0.0.1:8000/health            # FastAPI's own route
    curl http://127.0.0.1:8000/game/metrics      # socker's Prometheus metrics

Needs the extras `asgi` and `metrics` plus FastAPI and an ASGI server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from examples.game_flows import server as game_flow
from socker_transports.asgi import App
from socker_transports.metrics import PrometheusMetrics

metrics = PrometheusMetrics()
game = App(game_flow, on_event=metrics, http_handler=metrics.http_handler)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # A mounted App does not see the lifespan: shut it down from here (1001).
    await game.shutdown()


api = FastAPI(lifespan=lifespan)


@api.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "players": str(len(game.connections))}


api.mount("/game", game)
