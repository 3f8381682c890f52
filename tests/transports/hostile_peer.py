"""A flooding peer and a witness in a process of their own (127.0.0.1 only).

    python -m tests.transports.hostile_peer PORT KIND SECONDS MEGABYTES

KIND is "messages" (1-byte messages) or "fragments" (one message in 1-byte
fragments). One connection to /game floods for SECONDS or MEGABYTES, whichever
comes first (the bytes bound the server's backlog, hence the time it needs to
drain after the flood); meanwhile a witness
completes flows on /witness one after another (connect, the game server's 4
steps, "bye", the close handshake). Prints one JSON object: the witness's flow
times, the bytes flooded, whether the server cut the flood short. The flooder
then vanishes with a reset, so the server's unread input is dropped.

A process of its own because the server under test shares the test process: a
witness (or a flood) on a thread there would measure the GIL, not the server.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from tests.transports.rawpeer import OP_CONT, RawPeer, frame

KEY = b"\x01\x02\x03\x04"
#: Most witness flows, whatever the duration.
MAX_FLOWS = 2000


def blob(kind: str) -> tuple[bytes, bytes]:
    """(what is sent first, what is sent again and again)."""
    if kind == "messages":
        return b"", frame(b"x", key=KEY) * 10_000
    if kind == "fragments":
        return frame(b"x", fin=False, key=KEY), frame(b"x", OP_CONT, fin=False, key=KEY) * 10_000
    raise SystemExit(f"unknown kind {kind!r}")


def witness_flow(port: int) -> float:
    started = time.monotonic()
    with RawPeer.connect(port, "/witness", timeout=10.0) as peer:
        peer.game_steps(4, "witness")
        peer.send_message(b"bye")
        code, reason = peer.expect_close()
        assert (code, reason) == (1000, b"flow complete"), (code, reason)
    return time.monotonic() - started


def main(port: int, kind: str, seconds: float, megabytes: float) -> dict[str, object]:
    first, chunk = blob(kind)
    flooder = RawPeer.connect(port, "/game", timeout=10.0)
    flooder.game_steps(1, "flooder")
    sent = 0
    cut = False
    stop = time.monotonic() + seconds

    def flood() -> None:
        nonlocal sent, cut
        try:
            flooder.send(first)
            while time.monotonic() < stop and sent < megabytes * 1e6:
                flooder.send(chunk)
                sent += len(chunk)
        except OSError:
            cut = True  # the server closed the flood (1009, say)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    time.sleep(min(0.1, seconds / 10))  # let the flood fill the buffers first
    times = []
    while time.monotonic() < stop and len(times) < MAX_FLOWS:
        times.append(witness_flow(port))
    thread.join(seconds + 10.0)
    flooder.reset()
    return {"times": times, "sent": sent, "cut": cut, "flooding": thread.is_alive()}


if __name__ == "__main__":
    port, kind, seconds, megabytes = sys.argv[1:5]
    print(json.dumps(main(int(port), kind, float(seconds), float(megabytes))))
