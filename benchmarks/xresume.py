"""`python -m benchmarks.xresume`: what cross-worker resume costs in the core.

- `deliver`: microseconds per room delivery through a resumable Stepper, with the
  outgoing ledger (cross-worker resume) and without (in-process resume): the ledger's
  bookkeeping, and that a streaming room needs no store write (`needs_persist`
  stays False for implicit deliveries).
- `snapshot`: a session with `--pending` unacknowledged messages (every 8th a direct
  send, the rest room deliveries): `Stepper.snapshot` + `to_bytes` time and size, and
  `from_bytes`.
- `plan`: `plan_resume` for a client that missed `--pending` messages.

Figures are noisy on a shared machine: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import time
from statistics import median

from socker_core import (
    Flow,
    OutgoingLedger,
    Registry,
    ReplayBuffer,
    RoomHistory,
    RoomRef,
    SessionSnapshot,
    Stepper,
    plan_resume,
)


def _flow() -> Flow:
    flow = Flow("bench", resume_window=30.0, max_resume_buffer=1 << 30)
    flow.add(lambda conn, message: False, name="play")
    return flow


def _stepper(ledger: bool) -> Stepper:
    registry = Registry()
    replay = ReplayBuffer(1 << 30, ledger=OutgoingLedger() if ledger else None)
    stepper = Stepper(_flow(), registry=registry, replay=replay)
    stepper.open(0.0)
    stepper.conn.join("room")
    if ledger:
        stepper.persisted(stepper.snapshot(0.0))
    return stepper


def deliver_cost(messages: int, ledger: bool) -> float:
    stepper = _stepper(ledger)
    replay = stepper.replay
    assert replay is not None
    payload = b"x" * 64
    stepper.deliver(payload, RoomRef("room", "E", 1))
    if ledger:
        stepper.persisted(stepper.snapshot(0.0))  # a new tail: the one store write
    start = time.perf_counter()
    for offset in range(2, messages + 1):
        stepper.deliver(payload, RoomRef("room", "E", offset))
        if offset % 32 == 0:
            stepper.pending_events()
            replay.ack(replay.sent)  # the client acknowledges, as it does every 32
    elapsed = time.perf_counter() - start
    if ledger:
        # Every delivery after the first continues the stored tail: no store write.
        assert replay.ledger is not None and replay.ledger.durable_sent == messages
    return elapsed / messages * 1e6


def _session(pending: int) -> Stepper:
    stepper = _stepper(True)
    for n in range(1, pending + 1):
        if n % 8 == 0:
            stepper.send(b"direct %d" % n, 0.0)
        else:
            stepper.deliver(b"p" * 64, RoomRef("room", "E", n))
    stepper.pending_events()
    return stepper


def snapshot_cost(pending: int) -> dict[str, float]:
    stepper = _session(pending)
    take, back = [], []
    data = b""
    for _ in range(5):
        start = time.perf_counter()
        data = stepper.snapshot(0.0).to_bytes()
        take.append(time.perf_counter() - start)
        start = time.perf_counter()
        SessionSnapshot.from_bytes(data)
        back.append(time.perf_counter() - start)
    return {
        "to_bytes_ms": median(take) * 1e3,
        "from_bytes_ms": median(back) * 1e3,
        "bytes": len(data),
    }


def plan_cost(pending: int) -> float:
    stepper = _session(pending)
    snapshot = SessionSnapshot.from_bytes(stepper.snapshot(0.0).to_bytes())
    # The room's stream: every offset (those the session sent as direct messages are
    # publications it was skipped in, here: addressed to others).
    history = RoomHistory(
        "room", "E", 0, tuple((n, b"p" * 64 if n % 8 else None) for n in range(1, pending + 1))
    )
    times = []
    for _ in range(5):
        start = time.perf_counter()
        plan = plan_resume(snapshot, 0, {"room": history}, max_bytes=1 << 30)
        times.append(time.perf_counter() - start)
    assert not hasattr(plan, "code"), plan
    return median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="*", default=["deliver", "snapshot", "plan"])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--pending", type=int, default=1_000)
    args = parser.parse_args(argv)
    if "deliver" in args.what:
        plain, kept = [], []
        for _ in range(5):  # interleaved, so machine noise hits both alike
            plain.append(deliver_cost(args.messages, False))
            kept.append(deliver_cost(args.messages, True))
        print(
            f"room delivery through a resumable Stepper: {median(plain):.3f} us in-process, "
            f"{median(kept):.3f} us with the outgoing ledger "
            f"(x{median(kept) / median(plain):.2f}); no store write per delivery"
        )
    if "snapshot" in args.what:
        figures = snapshot_cost(args.pending)
        print(
            f"snapshot of {args.pending} unacknowledged messages: {figures['bytes']} bytes, "
            f"to_bytes {figures['to_bytes_ms']:.2f} ms, "
            f"from_bytes {figures['from_bytes_ms']:.2f} ms"
        )
    if "plan" in args.what:
        print(f"plan_resume for {args.pending} missed messages: {plan_cost(args.pending):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
