"""`uvicorn tests.asgi.engine_app:app`: the engine-rooms flow (tests/engine/
test_server_engine.py's command protocol) in a standalone App whose engine is the
URL in SOCKER_TEST_ENGINE. uvicorn sends it lifespan, so it enters the engine at
startup. Each connection is first told its worker ("r:pid:<pid>"), and GET /
answers "engine:up" while the engine's store is reachable, "engine:down" before
it was entered or once it is lost."""

from __future__ import annotations

import os

from socker_core import Connection
from socker_transports.asgi import App
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.engine.test_server_engine import anyio_flow

flow = anyio_flow()


@flow.on_open
def tell_worker(conn: Connection) -> None:
    conn.send(f"r:pid:{os.getpid()}".encode())


def engine_state(request: HandshakeRequest) -> HttpResponse:
    up = bool(getattr(app.engine, "available", False))
    return HttpResponse(200, f"engine:{'up' if up else 'down'} pid:{os.getpid()}".encode())


app = App(flow, engine=os.environ["SOCKER_TEST_ENGINE"], http_handler=engine_state, close_timeout=2)
