"""Atheris harness for `socker_core.Stepper`: a script of calls decoded from the
input (messages, resumes with any outcome, ticks, application sends and closes,
the transport ending), on a flow whose handlers do everything a handler can do.

Checks: a correctly driven Stepper never raises; every event list is coherent
(nothing after `Closed`; `CloseRequested` once, with a sendable code); once the
transport ends the stepper is closed, `Closed` was emitted exactly once with a
code from the table or the one given, and on_close ran exactly once iff it opened.

Run (needs the `fuzz` extra: `pip install -e '.[fuzz]'`):

    .venv/bin/python fuzz/fuzz_core.py -max_total_time=600 -artifact_prefix=fuzz/ fuzz/corpus/core
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from socker_core import (
        CLOSE_CODES,
        Await,
        Close,
        Closed,
        CloseRequested,
        Connection,
        ConnectionClosedError,
        Event,
        Flow,
        Goto,
        Stepper,
        is_sendable_close_code,
    )


async def _pending() -> object:  # closed, never awaited
    return None


class Tally:
    def __init__(self) -> None:
        self.opened = self.closed = 0


def make_flow(tally: Tally) -> Flow:
    flow = Flow("fuzz", step_timeout=None)

    @flow.on_open
    def opened(conn: Connection) -> Any:
        tally.opened += 1
        return _pending() if conn.state.__dict__.get("async_open") else None

    def behave(conn: Connection, message: bytes) -> Any:
        kind = message[0] % 11 if message else 0
        if kind == 0:
            conn.send(message)
            return False
        if kind == 1:
            return _pending()
        if kind == 2:
            return True
        if kind == 3:
            return Close(4000 + (message[1] if len(message) > 1 else 0), "fuzz")
        if kind == 4:
            raise ValueError("handler error")
        if kind == 5:
            return Goto(("a", "b", "c", "nowhere")[message[1] % 4 if len(message) > 1 else 0])
        if kind == 6:
            conn.close(1001, "from handler")
            return True
        if kind == 7:
            return "garbage"
        if kind == 8:
            conn.send(message * 2)
            return None
        if kind == 9:
            return Goto("a")
        return False

    flow.add(behave, name="a", timeout=5.0)
    flow.add(behave, name="b")
    flow.add(behave, name="c", timeout=1.0)

    @flow.on_close
    def closed(conn: Connection) -> Any:
        tally.closed += 1
        return _pending() if tally.closed % 2 else None

    return flow


class Checker:
    def __init__(self) -> None:
        self.closed_events: list[Closed] = []
        self.close_requests = 0
        self.pending: list[int] = []

    def take(self, events: list[Event]) -> None:
        for event in events:
            assert not self.closed_events, f"{event!r} after Closed"
            if isinstance(event, Await):
                event.awaitable.close()  # type: ignore[attr-defined]
                if event.step != "<on_close>":
                    self.pending.append(event.token)
            elif isinstance(event, CloseRequested):
                self.close_requests += 1
                assert self.close_requests == 1, "CloseRequested twice"
                assert is_sendable_close_code(event.code), event.code
            elif isinstance(event, Closed):
                self.closed_events.append(event)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    tally = Tally()
    stepper = Stepper(make_flow(tally), max_queue=fdp.ConsumeIntInRange(1, 4))
    stepper.conn.state.async_open = fdp.ConsumeBool()
    check = Checker()
    now = 0.0
    check.take(stepper.open(now))
    ended_with: int | None = None
    chosen: set[int] = set()  # codes the application closed with
    while fdp.remaining_bytes() and not stepper.is_closed:
        op = fdp.ConsumeIntInRange(0, 7)
        if op <= 2:
            if stepper.accepting:
                check.take(stepper.receive(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)), now))
        elif op == 3:
            if check.pending:
                token = check.pending.pop(0)
                outcome = fdp.ConsumeIntInRange(0, 7)
                if outcome == 7:
                    check.take(stepper.resume_error(token, ValueError("async"), now))
                else:
                    results = [True, False, None, Goto("b"), Goto("x"), Close(1000), "bad"]
                    check.take(stepper.resume(token, results[outcome], now))
                check.pending = [t for t in check.pending if t > token]
        elif op == 4:
            now += fdp.ConsumeFloatInRange(0.0, 10.0)
            check.take(stepper.tick(now))
            deadline = stepper.next_deadline
            assert deadline is None or deadline > now, "tick left a deadline due"
        elif op == 5:
            try:
                check.take(stepper.send(fdp.ConsumeBytes(4), now))
            except ConnectionClosedError:
                assert check.close_requests == 1
        elif op == 6:
            code = fdp.PickValueInList([1000, 1001, 3000, 4999])
            chosen.add(code)
            check.take(stepper.close(code, "app", now))
        else:
            ended_with = fdp.PickValueInList([1000, 1005, 1006, 1011, 4000])
            check.take(stepper.transport_closed(ended_with, "transport", now))
    if not stepper.is_closed:
        ended_with = 1006
        check.take(stepper.transport_closed(1006, "end of input", now))
    assert stepper.is_closed
    assert len(check.closed_events) == 1
    code = check.closed_events[0].code
    assert code in CLOSE_CODES or code in chosen or code == ended_with or 4000 <= code <= 4255, code
    assert tally.opened == 1 and tally.closed == 1


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
