"""The demo's 320 KiB scene (sent on every connect), with and without compression.

In process, no I/O: a server `Wire` running the demo's scene-sending `on_open`
and a client `Wire` receiving it, joined back to back. Reports the bytes the
server writes for the scene (frames included) and the CPU time from the
client's handshake to the last scene message delivered (framing, masking,
compression and decompression on both sides), median of `--repeats`.

    python -m benchmarks.scene [--kib 320] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import median
from typing import Any

from socker_core import Connection, Flow
from socker_transports.classic_demo import _scene
from socker_transports.wire import Options, Wire


def flows(kib: int) -> tuple[Flow, Flow, list[int]]:
    blobs = _scene(kib)
    server = Flow("scene-server")

    @server.on_open
    def send_scene(conn: Connection) -> None:
        for blob in blobs:
            conn.send(b"S" + blob)
        conn.send(b"E")

    @server.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    got = [0]
    client = Flow("scene-client")

    @client.step
    def scene(conn: Connection, message: bytes) -> bool:
        got[0] += 1
        return message == b"E"

    @client.step
    def idle(conn: Connection, message: bytes) -> bool:
        return False

    return server, client, got


def one(kib: int, compression: str | None) -> tuple[int, float]:
    server_flow, client_flow, got = flows(kib)
    options = Options(compression=compression, max_size=None)
    started = time.process_time()
    client = Wire.client(client_flow, "example.test", 0.0, options)
    server = Wire.server(server_flow, 0.0, options)
    server.receive_data(bytes(client.data_to_send()), 0.0)
    sent = bytes(server.data_to_send())
    head = sent.index(b"\r\n\r\n") + 4
    client.receive_data(sent, 0.0)
    spent = time.process_time() - started
    blobs = len(_scene(kib))
    assert got[0] == blobs + 1, (got, blobs)
    return len(sent) - head, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scene")
    parser.add_argument("--kib", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"scene_kib": args.kib}
    for compression in (None, "deflate"):
        runs = [one(args.kib, compression) for _ in range(args.repeats)]
        report[compression or "none"] = {
            "bytes_on_the_wire": runs[0][0],
            "cpu_ms": median(spent for _, spent in runs) * 1000,
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
