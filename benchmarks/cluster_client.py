"""The load client of `benchmarks.cluster_broadcast`: picows (compiled) on uvloop.

    python -m benchmarks.cluster_client {socker|sio} PORT N [--trigger]

opens N websocket connections to 127.0.0.1:PORT in batches of 100 and waits until
each has been told which worker holds it; prints {"ready": N, "workers": {pid: count}}.
Then, per stdin line `go R` (only the `--trigger` process gets them), it sends the
trigger for round R on its first connection and prints {"sent": R, "t0": ...} with
the `time.monotonic()` read right before the send; every process prints {"round": R,
"first": ..., "last": ..., "cpu": ..., "duplicates": ...} once all N of its
connections have the round's broadcast (first and last receipt, CLOCK_MONOTONIC: one
clock for every process on the machine; `cpu`: this process's CPU seconds so far;
`duplicates`: copies a connection got twice, so far: must stay 0). Any other line
ends it.

Protocols, as each server speaks them (benchmarks/cluster_servers.py):

- socker: binary messages; `hi:PID` on open, `go:RRRRRRRR` triggers, the broadcast is
  64 B whose first 8 bytes are the round in hex.
- sio: engine.io v4 / socket.io v5 over a websocket (`/socket.io/?EIO=4&transport=
  websocket`), text frames: the server opens with `0{...}`, the client connects to
  the default namespace with `40`, the server acknowledges `40{"sid":...}`; the client
  asks `42["hello"]` and gets `42["hi",PID]`; triggers are `42["go","RRRRRRRR"]` and
  the broadcast is `42["b","RRRRRRRR" + 56 x]`. An engine.io ping (`2`) is answered
  with a pong (`3`).

The per-message work is the same for both: one payload copy and a fixed-offset slice.
Bounded: the connections must be ready within `READY_TIMEOUT`, and the process ends
by itself after `LIFETIME` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time
from typing import Any

READY_TIMEOUT = 120.0
LIFETIME = 600.0
BATCH = 100


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_client(system: str, port: int, n: int, trigger: bool) -> int:
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_nofile()
    timer = threading.Timer(LIFETIME, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    clock = time.monotonic
    rounds: dict[bytes, list[float]] = {}  # round (hex) -> [first, last, count]
    workers: dict[int, int] = {}  # worker pid -> connections it holds
    all_ready = asyncio.Event()

    duplicates = [0]

    def receipt(listener: Any, key: bytes) -> None:
        now = clock()
        if listener.last_round == key:  # this connection had it already
            duplicates[0] += 1
            return
        listener.last_round = key
        seen = rounds.get(key)
        if seen is None:
            seen = rounds[key] = [now, now, 0.0]
        seen[1] = now
        seen[2] += 1
        if seen[2] == n:
            del rounds[key]
            emit(
                round=int(key, 16),
                first=seen[0],
                last=seen[1],
                cpu=time.process_time(),
                duplicates=duplicates[0],
            )

    def hello(pid: int) -> None:
        workers[pid] = workers.get(pid, 0) + 1
        if sum(workers.values()) == n:
            all_ready.set()

    class SockerListener(WSListener):
        last_round = b""

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            data = frame.get_payload_as_bytes()
            if data[:3] == b"hi:":
                hello(int(data[3:]))
            else:
                receipt(self, data[:8])

    class SioListener(WSListener):
        last_round = b""

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            data = frame.get_payload_as_bytes()
            if data[:8] == b'42["b","':
                receipt(self, data[8:16])
            elif data == b"2":  # engine.io ping
                transport.send(WSMsgType.TEXT, b"3")
            elif data[:1] == b"0":  # engine.io open: connect to the default namespace
                transport.send(WSMsgType.TEXT, b"40")
            elif data[:2] == b"40":  # socket.io connected: which worker?
                transport.send(WSMsgType.TEXT, b'42["hello"]')
            elif data[:8] == b'42["hi",':
                hello(int(data[8:-1]))

    factory: type[WSListener]
    if system == "socker":
        url, factory, kind = f"ws://127.0.0.1:{port}/", SockerListener, WSMsgType.BINARY
    else:
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        factory, kind = SioListener, WSMsgType.TEXT

    def trigger_message(round_no: int) -> bytes:
        if system == "socker":
            return f"go:{round_no:08x}".encode()
        return f'42["go","{round_no:08x}"]'.encode()

    async def main() -> None:
        transports: list[WSTransport] = []
        for start in range(0, n, BATCH):  # in batches: the servers' backlogs stay small
            batch = await asyncio.gather(
                *(
                    ws_connect(factory, url, websocket_handshake_timeout=30)
                    for _ in range(start, min(n, start + BATCH))
                )
            )
            transports += [transport for transport, _ in batch]
        await asyncio.wait_for(all_ready.wait(), READY_TIMEOUT)
        emit(ready=len(transports), workers=workers)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.startswith("go"):
                break
            if not trigger:
                continue
            round_no = int(line.split()[1])
            message = trigger_message(round_no)
            t0 = clock()
            transports[0].send(kind, message)
            emit(sent=round_no, t0=t0)
        for transport in transports:
            transport.disconnect()

    uvloop.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[0] not in ("socker", "sio"):
        raise SystemExit("usage: python -m benchmarks.cluster_client {socker|sio} PORT N")
    return run_client(args[0], int(args[1]), int(args[2]), "--trigger" in args[3:])


if __name__ == "__main__":
    sys.exit(main())
