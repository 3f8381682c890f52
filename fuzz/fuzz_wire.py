"""Atheris harness for `socker_transports.wire.Wire` (both roles, before and after
the opening handshake).

The input is read as a script of driver operations: feed raw bytes, feed a
(possibly malformed) frame, let time pass, settle a pending await, send or close
from the application. The harness checks what the hypothesis suite checks
(tests/transports/test_wire_fuzz.py): nothing escapes the wire, `tick` consumes
the deadlines it handles, a driver that takes the output and settles every
await is never stuck, and after EOF the connection is finished with a close
code from the table (or a valid peer code) and on_close ran once iff it opened.

Run (needs the `fuzz` extra: `pip install -e '.[fuzz]'`):

    .venv/bin/python fuzz/fuzz_wire.py -max_total_time=600 -artifact_prefix=fuzz/ fuzz/corpus/wire

(`mkdir -p fuzz/corpus/wire` first to keep the corpus; any libFuzzer flag works.)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    import h11  # noqa: F401  # instrumented too: the handshake parser
    import wsproto  # noqa: F401
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection

    from socker_core import (
        CLOSE_CODES,
        Await,
        Close,
        Closed,
        ConnectionClosedError,
        Goto,
    )
    from socker_transports.wire import Accept, AwaitHandshake, Options, Phase, Reject, Wire

# The flow and frame builders are the hypothesis suite's own (tests/transports/wire_peer.py),
# so both fuzzers exercise the same thing; they are test helpers, not instrumented.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.transports.wire_peer import (
    Tally,
    frame,
    make_fuzz_flow,
    pending_awaitable,
    upgrade_request,
)

REQUEST = upgrade_request()


class Driver:
    def __init__(self, wire: Wire, tally: Tally, fdp: atheris.FuzzedDataProvider) -> None:
        self.wire, self.tally, self.fdp = wire, tally, fdp
        self.now = 0.0
        self.pending: list[Await] = []
        self.hook_pending = False

    def events(self) -> None:
        for event in self.wire.events():
            if isinstance(event, Await):
                event.awaitable.close()  # type: ignore[attr-defined]
                if not event.step.startswith("<on_close"):
                    self.pending.append(event)
            elif isinstance(event, AwaitHandshake):
                event.awaitable.close()  # type: ignore[attr-defined]
                self.hook_pending = True
            elif isinstance(event, Closed):
                self.tally.closed_events.append(event)

    def settle_one(self) -> None:
        wire, fdp = self.wire, self.fdp
        if self.hook_pending:
            self.hook_pending = False
            answers = [None, Accept(), Reject(403), RuntimeError("hook")]
            wire.finish_handshake(answers[fdp.ConsumeIntInRange(0, 3)], self.now)
        elif self.pending:
            token = self.pending.pop(0).token
            outcome = fdp.ConsumeIntInRange(0, 6)
            if outcome == 6:
                wire.resume_error(token, ValueError("async"), self.now)
            else:
                results = [True, False, None, Goto("first"), Close(1000), "bad"]
                wire.resume(token, results[outcome], self.now)
        self.events()

    def settle_all(self) -> None:
        for _ in range(1000):
            self.wire.data_to_send()
            if not (self.pending or self.hook_pending):
                break
            self.settle_one()
        self.wire.data_to_send()
        assert self.wire.wants_data or self.wire.should_close_transport, self.wire.phase

    def step(self, client: bool) -> None:
        wire, fdp = self.wire, self.fdp
        op = fdp.ConsumeIntInRange(0, 10)
        if op <= 4:
            if not wire.wants_data:
                self.settle_all()
            wire.receive_data(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)), self.now)
        elif op == 5:
            if not wire.wants_data:
                self.settle_all()
            opcode = fdp.PickValueInList([0x0, 0x1, 0x2, 0x2, 0x8, 0x9, 0xA, 0x3])
            rsv = fdp.ConsumeIntInRange(0, 7) if fdp.ConsumeProbability() < 0.1 else 0
            mask = (not client) != (fdp.ConsumeProbability() < 0.05)
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            wire.receive_data(
                frame(payload, opcode, fin=fdp.ConsumeBool(), rsv=rsv, mask=mask), self.now
            )
        elif op == 6:
            self.now += fdp.ConsumeFloatInRange(0.0, 40.0)
            deadline = wire.next_deadline
            if deadline is not None and deadline <= self.now:
                wire.tick(self.now)
                following = wire.next_deadline
                assert following is None or following > self.now, "tick left a deadline due"
        elif op == 7:
            self.settle_one()
        elif op == 8:
            data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 100))
            if wire.is_open:
                wire.send(data, self.now)
            else:
                try:
                    wire.send(data, self.now)
                except ConnectionClosedError:
                    pass
                else:
                    raise AssertionError("send succeeded on a wire that is not open")
        elif op == 9:
            wire.close(fdp.PickValueInList([1000, 1001, 4000]), "app", self.now)
        else:
            wire.data_to_send()
        self.events()

    def finish(self) -> None:
        wire, tally = self.wire, self.tally
        self.settle_all()
        wire.receive_data(None, self.now)
        self.events()
        self.settle_all()
        wire.tick(self.now + 1e6)
        self.events()
        assert wire.finished and wire.should_close_transport and wire.phase is Phase.DONE
        assert wire.next_deadline is None
        code = wire.close_code
        assert code is not None
        assert code in CLOSE_CODES or 1000 <= code <= 1014 or 3000 <= code <= 4999, code
        assert tally.opened <= 1 and tally.closed == tally.opened
        assert len(tally.closed_events) == tally.opened
        if tally.closed_events:
            assert tally.closed_events[0].code == code


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    tally = Tally()
    setup = fdp.ConsumeIntInRange(0, 255)
    client = bool(setup & 1)
    options = Options(
        max_size=(None, 1, 100, 1000)[(setup >> 1) & 3],
        max_queue=1 + ((setup >> 3) & 1),
        open_timeout=5.0,
        close_timeout=2.0 if setup & 16 else None,
        ping_interval=3.0 if setup & 32 else None,
        ping_timeout=1.0,
        max_headers=8 if setup & 64 else 128,
        accept_text=bool(setup & 128),
        write_limit=100,
        max_send_buffer=2000,
    )
    flow = make_fuzz_flow(tally)
    valid_start = fdp.ConsumeBool()
    if client:
        wire = Wire.client(flow, "fuzz", 0.0, options)
        if valid_start:
            server = WSConnection(ConnectionType.SERVER)
            server.receive_data(bytes(wire.data_to_send()))
            next(server.events())
            wire.receive_data(server.send(AcceptConnection()), 0.0)
    else:
        hook = fdp.ConsumeIntInRange(0, 2)

        def async_hook(request: object) -> Any:
            return pending_awaitable()

        wire = Wire.server(
            flow,
            0.0,
            options,
            handshake_hook=(None, lambda r: Accept(state={"x": 1}), async_hook)[hook],
        )
        if valid_start:
            wire.receive_data(REQUEST, 0.0)
    driver = Driver(wire, tally, fdp)
    driver.events()
    while fdp.remaining_bytes() and not wire.should_close_transport:
        driver.step(client)
    driver.finish()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
