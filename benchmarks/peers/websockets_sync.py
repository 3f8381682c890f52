"""`websockets` (threaded implementation, `websockets.sync`): a thread per connection."""

from __future__ import annotations

import threading

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from . import HOST, MAX_SIZE, Ready


def _echo(ws: ServerConnection) -> None:
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass


def serve(port: int, ready: Ready, lifetime: float) -> None:
    with ws_serve(_echo, HOST, port, compression=None, max_size=MAX_SIZE) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        ready(server.socket.getsockname()[1])
        thread.join(lifetime)
        server.shutdown()
