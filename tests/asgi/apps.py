"""ASGI applications the tests serve: socker flows mounted in FastAPI and Starlette
next to an ordinary HTTP route, and a standalone App for `uvicorn mod:app`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from socker_transports.asgi import App
from tests.transports.flows import make_game_server

HEALTH_BODY = "ok"


def fastapi_app(mounts: dict[str, Any]) -> FastAPI:
    """FastAPI with GET /health, then each socker App mounted at its prefix."""
    api = FastAPI()

    @api.get("/health", response_class=PlainTextResponse)
    def health() -> str:
        return HEALTH_BODY

    for prefix, app in mounts.items():
        api.mount(prefix, app)
    return api


def starlette_app(mounts: dict[str, Any]) -> Starlette:
    """Starlette with GET /health, then each socker App mounted at its prefix."""

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse(HEALTH_BODY)

    routes: list[Any] = [Route("/health", health)]
    routes += [Mount(prefix, app=app) for prefix, app in mounts.items()]
    return Starlette(routes=routes)


#: `uvicorn tests.asgi.apps:standalone`: the game flow served by the App alone.
standalone = App(make_game_server())
