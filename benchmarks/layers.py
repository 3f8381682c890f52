"""socker's own layers' cost: CPU per echoed message, in process, no I/O.

The same bytes (a client's masked 16 B frames) go through

- raw: `wsproto.WSConnection` and the minimal echo of `peers/raw_wsproto.py`;
- socker: `socker_transports.wire.Wire` running the echo flow (one staying step,
  `conn.send(message); return False`), as a driver calls it: `receive_data`,
  `data_to_send`, `events`.

Two read patterns: one frame per read (ping-pong) and 64 frames per read
(pipelined). The difference is what wire + socker_core add per message.
Run as `python -m benchmarks.layers`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from statistics import median
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from .client import client_frame, request_bytes
from .peers import MAX_SIZE
from .peers._flow import echo_flow

PAYLOAD = b"0123456789abcdef"


def _chunks(messages: int, per_read: int) -> list[bytes]:
    frame = client_frame(PAYLOAD)
    return [frame * per_read for _ in range(messages // per_read)]


def raw_echo(chunks: list[bytes]) -> tuple[float, int]:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(request_bytes(80))
    for event in ws.events():
        if isinstance(event, Request):
            ws.send(AcceptConnection())
    sent = 0
    parts: list[bytes | bytearray] = []
    size = 0
    start = time.process_time()
    for chunk in chunks:
        ws.receive_data(chunk)
        out: list[bytes] = []
        for event in ws.events():
            if isinstance(event, BytesMessage):
                size += len(event.data)
                if size > MAX_SIZE:
                    raise RuntimeError("too big")
                if event.message_finished:
                    if parts:
                        parts.append(event.data)
                        message = b"".join(parts)
                        parts.clear()
                    else:
                        message = bytes(event.data)
                    size = 0
                    out.append(ws.send(BytesMessage(data=message)))
                else:
                    parts.append(event.data)
        data = b"".join(out)
        sent += len(data)
    return time.process_time() - start, sent


def wire_echo(chunks: list[bytes]) -> tuple[float, int]:
    from socker_transports.wire import Options, Wire

    wire = Wire.server(echo_flow(), 0.0, Options(max_size=MAX_SIZE))
    wire.receive_data(request_bytes(80), 0.0)
    wire.data_to_send()
    wire.events()
    if not wire.is_open:
        raise RuntimeError("the wire did not open")
    sent = 0
    now = 1.0
    start = time.process_time()
    for chunk in chunks:
        wire.receive_data(chunk, now)
        data = wire.data_to_send()
        wire.events()
        sent += len(data)
    return time.process_time() - start, sent


def measure(messages: int, repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    runners: dict[str, Callable[[list[bytes]], tuple[float, int]]] = {
        "raw": raw_echo,
        "socker": wire_echo,
    }
    for per_read in (1, 64):
        chunks = _chunks(messages, per_read)
        count = len(chunks) * per_read
        samples: dict[str, list[float]] = {name: [] for name in runners}
        sizes: dict[str, int] = {}
        for _ in range(repeats):
            for name, run in runners.items():  # interleaved, so drift hits both
                gc.collect()
                seconds, sent = run(chunks)
                samples[name].append(seconds / count * 1e6)
                sizes[name] = sent
        if sizes["raw"] != sizes["socker"]:
            raise RuntimeError(f"the echoes differ: {sizes}")
        raw = median(samples["raw"])
        socker = median(samples["socker"])
        result[f"{per_read}_per_read"] = {
            "raw_us_per_msg": raw,
            "socker_us_per_msg": socker,
            "overhead": socker / raw - 1.0,
            "samples": samples,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layers")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    json.dump(measure(args.messages, args.repeats), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
