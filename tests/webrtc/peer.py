"""The other process of the two-process WebRTC tests.

    python -m tests.webrtc.peer server --direction server-offers
        serves one echo-game connection on 127.0.0.1 and prints JSON lines:
        {"url": ...} first, {"result": {...}} when the connection has ended.
    python -m tests.webrtc.peer vanish --direction D --url URL --at POINT
        a client (the `websockets` library and raw aiortc) that follows the
        handshake up to POINT and then exits without closing anything ("open":
        once the server's b"welcome" arrived on the data channel).

Both run inside `webrtc.local_only()` with the `guard` spies installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from socker_core import Connection, Flow, Result
from socker_transports import webrtc
from socker_transports.anyio import serve

from . import guard

SERVER_OFFERS = "server-offers"
CLIENT_OFFERS = "client-offers"
DIRECTIONS = (SERVER_OFFERS, CLIENT_OFFERS)
#: Where a vanishing client stops, per direction, in handshake order.
VANISH_POINTS = {
    SERVER_OFFERS: ("scene", "hello", "offer", "answer", "open"),
    CLIENT_OFFERS: ("offer", "answer", "open"),
}
SCENE = b"scene:" + bytes(range(256)) * 64  # 16 KiB of "buffered scene data"


def echo_server_flow(direction: str, received: list[bytes], **options: Any) -> Flow:
    """Server side of the echo game: on channel open it sends b"welcome", then echoes
    every data channel message as b"echo:" + message; b"done" on the websocket ends
    the flow (1000)."""
    flow = Flow(f"echo-{direction}")

    def on_channel(conn: Connection, channel: Any) -> None:
        channel.send(b"welcome")

        @channel.on("message")
        def echo(message: bytes) -> None:
            received.append(message)
            channel.send(b"echo:" + message)

    if direction == SERVER_OFFERS:
        flow.on_open(lambda conn: conn.send(SCENE))
        webrtc.server_offers(flow, on_channel=on_channel, label="echo", **options)
    else:
        webrtc.server_answers(flow, on_channel=on_channel, **options)

    @flow.step
    def control(conn: Connection, message: bytes) -> Result:
        return message == b"done"

    return flow


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run_server(direction: str, timeout: float) -> int:
    record = guard.install(setattr)
    received: list[bytes] = []
    ended = asyncio.Event()
    closes: list[dict[str, Any]] = []
    flow = echo_server_flow(direction, received)

    @flow.on_close
    def closed(conn: Connection) -> None:
        closes.append({"code": conn.close_code, "step": conn.step})
        ended.set()

    with webrtc.local_only():
        async with serve(flow, "127.0.0.1", 0) as server:
            emit({"url": server.url})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout)
    # Leaving `serve` waited for the on_close hooks (the peer connection's close).
    emit(
        {
            "result": {
                "closes": closes,
                "received": [m.decode("latin-1") for m in received],
                "peers": len(record.peers),
                "open_peers": len(record.open_peers()),
                "problems": record.problems(),
            }
        }
    )
    return 0


async def run_vanish(direction: str, url: str, at: str) -> None:
    """Follow the handshake to `at`, then exit the process without closing anything."""
    import websockets

    guard.install(setattr)

    def vanish() -> None:
        sys.stdout.flush()
        os._exit(0)

    with webrtc.local_only():
        async with websockets.connect(url, max_size=None, compression=None, proxy=None) as ws:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            opened = asyncio.Event()  # the server's b"welcome" arrived on the channel

            def welcomed(message: object) -> None:
                opened.set()

            if direction == SERVER_OFFERS:
                await ws.recv()  # the scene
                if at == "scene":
                    vanish()
                await ws.send(webrtc.hello())
                if at == "hello":
                    vanish()
                offer = webrtc.parse_signal(await ws.recv())
                if at == "offer":
                    vanish()

                @pc.on("datachannel")
                def on_channel(channel: Any) -> None:
                    channel.on("message", welcomed)

                await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await ws.send(webrtc.encode_signal("answer", sdp=pc.localDescription.sdp))
                if at == "answer":
                    vanish()
            else:
                channel = pc.createDataChannel("echo")
                channel.on("message", welcomed)
                await pc.setLocalDescription(await pc.createOffer())
                await ws.send(webrtc.encode_signal("offer", sdp=pc.localDescription.sdp))
                if at == "offer":
                    vanish()
                answer = webrtc.parse_signal(await ws.recv())
                if at == "answer":
                    vanish()
                await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            await asyncio.wait_for(opened.wait(), 10.0)
            vanish()  # at == "open"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "vanish"])
    parser.add_argument("--direction", choices=DIRECTIONS, required=True)
    parser.add_argument("--url")
    parser.add_argument("--at")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    if args.role == "server":
        return asyncio.run(run_server(args.direction, args.timeout))
    asyncio.run(asyncio.wait_for(run_vanish(args.direction, args.url, args.at), args.timeout))
    return 1  # vanish() exits with 0; getting here means the handshake went wrong


if __name__ == "__main__":
    sys.exit(main())
