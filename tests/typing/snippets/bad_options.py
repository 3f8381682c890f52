"""Must fail mypy --strict on every line marked `# error:` (and nowhere else)."""

from __future__ import annotations

from socker_core import Flow
from socker_transports import anyio as socker_anyio
from socker_transports import threaded, webrtc

flow = Flow("f")
URL = "ws://127.0.0.1:1/"


async def misspelt() -> None:
    socker_anyio.serve(flow, max_sise=1)  # error: Unexpected keyword argument "max_sise"
    socker_anyio.connect("ws://127.0.0.1:1/", flow, open_timeout="10")  # error: "open_timeout"
    await socker_anyio.run_client(URL, flow, pingInterval=3)  # error: "pingInterval"


def threaded_misspelt() -> None:
    threaded.serve(flow, max_qeue=3)  # error: Unexpected keyword argument "max_qeue"
    threaded.connect("ws://127.0.0.1:1/", flow, accept_text=1.5)  # error: "accept_text"
    threaded.run_client("ws://127.0.0.1:1/", flow, close_timout=1)  # error: "close_timout"


def signaling() -> None:
    webrtc.server_offers(flow, on_chanel=print)  # error: Unexpected keyword argument "on_chanel"
    webrtc.client_answers(flow, label="x")  # error: Unexpected keyword argument "label"
    webrtc.client_offers(flow, open_timeout=None)  # error: "open_timeout"
