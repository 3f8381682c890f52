"""`python -m benchmarks.core_step`: microseconds per message through socker_core.Stepper.

Side by side, in one process and one run, with the `transitions` library doing
the equivalent 4-state chain:

- stay:    the handler keeps the step (socker: returns False; transitions: a
           trigger whose condition is False);
- reply:   the handler sends a reply and stays (socker: `conn.send`; transitions:
           an internal transition whose `after` callback queues the reply);
- advance: every message moves to the next of 4 steps, the last one back to the
           first (socker: True / Goto; transitions: conditional a->b->c->d->a).

Repeats are interleaved across cases so machine noise hits all of them alike;
the table shows medians. Targets: <= 0.5 us per staying message, and >= 50x
faster than transitions. Runs in a few seconds; `--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from statistics import median
from typing import Any

from socker_core import Connection, Flow, Goto, Stepper

STAY_TARGET_US = 0.5
RATIO_TARGET = 50.0
MESSAGE = b"x" * 16


# -- socker ----------------------------------------------------------------------------


def socker_stay() -> Callable[[int], None]:
    flow = Flow("stay")

    @flow.step
    def stay(conn: Connection, message: bytes) -> bool:
        return False

    return _socker_loop(flow)


def socker_reply() -> Callable[[int], None]:
    flow = Flow("reply")

    @flow.step
    def reply(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    return _socker_loop(flow)


def socker_advance() -> Callable[[int], None]:
    flow = Flow("advance")
    for name in ("a", "b", "c"):
        flow.add(lambda conn, message: True, name=name)
    flow.add(lambda conn, message: Goto("a"), name="d")
    return _socker_loop(flow)


def _socker_loop(flow: Flow) -> Callable[[int], None]:
    stepper = Stepper(flow)
    stepper.open(0.0)
    receive = stepper.receive

    def run(count: int) -> None:
        message = MESSAGE
        for _ in repeat(None, count):
            receive(message, 1.0)
        if stepper.is_closed or stepper.phase.value != "open":
            raise RuntimeError(f"the benchmark stepper left the open state: {stepper.phase}")

    return run


# -- transitions -------------------------------------------------------------------------


class _Model:
    def __init__(self, advance: bool) -> None:
        self.advance = advance
        self.outbox: list[bytes] = []

    def decide(self, message: bytes) -> bool:
        return self.advance

    def send_reply(self, message: bytes) -> None:
        self.outbox.append(message)


def _machine(model: _Model) -> Any:
    from transitions import Machine

    return Machine(model=model, states=["a", "b", "c", "d"], initial="a", auto_transitions=False)


def transitions_stay() -> Callable[[int], None]:
    model = _Model(advance=False)
    machine = _machine(model)
    for source, dest in (("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")):
        machine.add_transition("message", source, dest, conditions="decide")
    return _transitions_loop(model, expect="a")


def transitions_reply() -> Callable[[int], None]:
    model = _Model(advance=False)
    machine = _machine(model)
    machine.add_transition("message", "a", None, after="send_reply")  # internal: stays
    return _transitions_loop(model, expect="a", outbox=True)


def transitions_advance() -> Callable[[int], None]:
    model = _Model(advance=True)
    machine = _machine(model)
    for source, dest in (("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")):
        machine.add_transition("message", source, dest, conditions="decide")
    return _transitions_loop(model, expect=None)


def _transitions_loop(
    model: _Model, *, expect: str | None, outbox: bool = False
) -> Callable[[int], None]:
    trigger = model.message  # type: ignore[attr-defined]

    def run(count: int) -> None:
        message = MESSAGE
        for _ in repeat(None, count):
            trigger(message)
        if expect is not None and model.state != expect:  # type: ignore[attr-defined]
            raise RuntimeError(f"transitions model moved to {model.state}")  # type: ignore[attr-defined]
        if outbox:
            model.outbox.clear()

    return run


# -- measuring ---------------------------------------------------------------------------

Factory = Callable[[], Callable[[int], None]]

CASES: dict[str, tuple[Factory, Factory]] = {
    "stay": (socker_stay, transitions_stay),
    "reply": (socker_reply, transitions_reply),
    "advance": (socker_advance, transitions_advance),
}


def _time_us(run: Callable[[int], None], count: int) -> float:
    """Microseconds per message for `count` messages, garbage collection paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run(count)
        elapsed = time.perf_counter_ns() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / count / 1000.0


def measure(repeats: int, socker_messages: int, transitions_messages: int) -> dict[str, Any]:
    runners = {
        (case, impl): factory()
        for case, factories in CASES.items()
        for impl, factory in zip(("socker", "transitions"), factories, strict=True)
    }
    counts = {"socker": socker_messages, "transitions": transitions_messages}
    for (_, impl), run in runners.items():  # warm up
        run(max(1, counts[impl] // 10))
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            samples[key].append(_time_us(run, counts[key[1]]))
    rows = {}
    for case in CASES:
        socker_us = median(samples[(case, "socker")])
        transitions_us = median(samples[(case, "transitions")])
        rows[case] = {
            "socker_us": socker_us,
            "transitions_us": transitions_us,
            "ratio": transitions_us / socker_us,
            "socker_samples": samples[(case, "socker")],
            "transitions_samples": samples[(case, "transitions")],
        }
    stay_us = float(rows["stay"]["socker_us"])  # type: ignore[arg-type]
    stay_ratio = float(rows["stay"]["ratio"])  # type: ignore[arg-type]
    return {
        "benchmark": "core_step",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "repeats": repeats,
        "messages": counts,
        "cases": rows,
        "targets": {
            "stay_us": {
                "target": STAY_TARGET_US,
                "value": stay_us,
                "met": stay_us <= STAY_TARGET_US,
            },
            "ratio_vs_transitions": {
                "target": RATIO_TARGET,
                "value": stay_ratio,
                "met": stay_ratio >= RATIO_TARGET,
            },
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"socker_core.Stepper vs transitions {_transitions_version()} "
        f"({result['implementation']} {result['python']}, {result['machine']}; "
        f"median of {result['repeats']} repeats)",
        "",
        "| case | socker µs/msg | transitions µs/msg | socker is |",
        "|------|--------------:|-------------------:|----------:|",
    ]
    for case, row in result["cases"].items():
        lines.append(
            f"| {case} | {row['socker_us']:.3f} | {row['transitions_us']:.3f} "
            f"| {row['ratio']:.1f}x faster |"
        )
    stay, ratio = result["targets"]["stay_us"], result["targets"]["ratio_vs_transitions"]
    lines += [
        "",
        f"target: staying message <= {stay['target']} µs: {stay['value']:.3f} µs "
        f"-> {'met' if stay['met'] else 'NOT met'}",
        f"target: >= {ratio['target']:.0f}x faster than transitions (stay): "
        f"{ratio['value']:.1f}x -> {'met' if ratio['met'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def _transitions_version() -> str:
    import transitions

    return str(getattr(transitions, "__version__", "?"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case")
    parser.add_argument("--messages", type=int, default=100_000, help="messages per socker run")
    parser.add_argument(
        "--transitions-messages", type=int, default=10_000, help="messages per transitions run"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is not met")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.messages < 1 or args.transitions_messages < 1:
        parser.error("--repeats, --messages and --transitions-messages must be positive")
    result = measure(args.repeats, args.messages, args.transitions_messages)
    print(table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    met = all(target["met"] for target in result["targets"].values())
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
