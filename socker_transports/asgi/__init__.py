"""socker_transports.asgi: serve socker flows from any ASGI server.

`App(routes, **options)` is an ASGI application: websocket scopes run a Flow (or
the Flow a path -> Flow mapping names), HTTP scopes get `http_handler`'s answer or
404, and lifespan scopes are acknowledged (shutdown closes live connections with
1001). Mount it in FastAPI or Starlette, or serve it alone:

    app = FastAPI()
    app.mount("/game", App(game_flow))          # ws://host/game/ (and below)
    # or: app.add_websocket_route("/game", App(game_flow))   # ws://host/game exactly

    uvicorn mymodule:app

Semantics are the native drivers' wherever the ASGI server lets socker own them:
the connection is driven by the same `socker_core.Stepper` (steps, on_open
speaking first, per-step timeouts through `tick`/`next_deadline`, async handlers
with the bounded queue: `receive` is not called while `Stepper.accepting` is
False, so the ASGI server's own buffer and flow control hold the rest), on_close
exactly once, and the same close codes, decided by the same functions as the
wire (`socker_transports._policy`: routing, origins, the handshake hook's answer,
text -> 1003, max_size -> 1009).

The ASGI server owns the transport: the HTTP handshake and its limits, frame
parsing and frame size, ping/pong keepalive, permessage-deflate, the close
handshake's timing and TLS. Options that only make sense for socker's own
transport (`ping_interval`, `ping_timeout`, `max_line`, `max_headers`,
`write_limit`, `max_send_buffer`) are refused here with a pointer to the server
setting (see the README's ASGI section for the uvicorn and hypercorn names).

The App keeps its live connections (`App.connections`, id -> `AsgiConnection`)
and has the anyio Server's rooms surface (`conn.join`, `App.room`, `rooms`,
`broadcast`, `publish`, `presence`, `rooms_settled`), in-process or, with
`engine=`, cluster-wide: entered on lifespan startup or, mounted in a framework
that does not forward lifespan, on the first websocket connection
(engine_lifetime.py).
"""

from .app import SERVER_OWNED_OPTIONS, App
from .connection import AsgiConnection

__all__ = ["SERVER_OWNED_OPTIONS", "App", "AsgiConnection"]
