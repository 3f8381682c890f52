"""socker's threaded driver (blocking sockets and threads)."""

from __future__ import annotations

import time

from . import HOST, MAX_SIZE, Ready
from ._flow import echo_flow


def serve(port: int, ready: Ready, lifetime: float) -> None:
    from socker_transports.threaded import serve as socker_serve

    with socker_serve(echo_flow(), HOST, port, max_size=MAX_SIZE) as server:
        ready(server.port)
        time.sleep(lifetime)
