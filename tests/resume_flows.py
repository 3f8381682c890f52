"""The 4-step flow pair every resume test runs: control messages in flight both ways.

Server step i waits for the client's burst c{i}-0..2, then sends its burst
s{i}-0..2 and advances; the client opens with burst c0, and its step i waits
for s{i}-0..2, then sends c{i+1} and advances. Both flows complete after step 3.
Every handler records what it saw, so a test asserts "each message exactly once,
in order" from both transcripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from socker_core import Connection, Flow

BURST = 3
STEPS = 4


def expected(side: str) -> list[bytes]:
    """What the `side` handlers must see, in order."""
    other = "s" if side == "client" else "c"
    return [f"{other}{i}-{k}".encode() for i in range(STEPS) for k in range(BURST)]


@dataclass
class Record:
    seen: list[bytes] = field(default_factory=list)
    opened: int = 0
    closed: list[int | None] = field(default_factory=list)
    detached: int = 0
    resumed: int = 0


def _burst(conn: Connection, prefix: str, step: int) -> None:
    for k in range(BURST):
        conn.send(f"{prefix}{step}-{k}".encode())


def make_pair(
    window: float = 30.0, max_resume_buffer: int = 1 << 20, payload: int = 0
) -> tuple[Flow, Flow, Record, Record]:
    """(server_flow, client_flow, server_record, client_record). `payload` pads
    every message with that many extra bytes (for buffer-overflow tests)."""
    server = Flow("resume-server", resume_window=window, max_resume_buffer=max_resume_buffer)
    client = Flow("resume-client", resume_window=window, max_resume_buffer=max_resume_buffer)
    srec, crec = Record(), Record()
    pad = b"." * payload

    def stepper(side: str, record: Record, flow: Flow, mine: str) -> None:
        def make(i: int) -> object:
            def handler(conn: Connection, message: bytes) -> bool:
                record.seen.append(message.rstrip(b"."))
                if (
                    sum(
                        1
                        for m in record.seen
                        if m.startswith(f"{'c' if side == 'server' else 's'}{i}-".encode())
                    )
                    < BURST
                ):
                    return False
                if side == "server":
                    for k in range(BURST):
                        conn.send(f"s{i}-{k}".encode() + pad)
                elif i + 1 < STEPS:
                    for k in range(BURST):
                        conn.send(f"c{i + 1}-{k}".encode() + pad)
                return True

            handler.__name__ = f"step{i}"
            return handler

        for i in range(STEPS):
            flow.add(make(i), name=f"step{i}")  # type: ignore[arg-type]

        @flow.on_open
        def opened(conn: Connection) -> None:
            record.opened += 1
            if side == "client":
                for k in range(BURST):
                    conn.send(f"c0-{k}".encode() + pad)

        @flow.on_close
        def closed(conn: Connection) -> None:
            record.closed.append(conn.close_code)

        @flow.on_detach
        def detached(conn: Connection) -> None:
            record.detached += 1

        @flow.on_resume
        def resumed(conn: Connection) -> None:
            record.resumed += 1

    stepper("server", srec, server, "s")
    stepper("client", crec, client, "c")
    return server, client, srec, crec


def control_size(kind: str, **fields: object) -> int:
    """Bytes of one server control frame (a 2-byte header: under 126 bytes of JSON),
    for tests that cut the transport at a byte. Tokens are 22 characters."""
    from socker_transports.wire.resume import control

    return 2 + len(control(kind, **({"token": "A" * 22} | fields)))


def session_size(window: float, heartbeat: float | None) -> int:
    """Bytes of the server's "session" frame; `heartbeat`: its ping_interval."""
    beat = {} if heartbeat is None else {"heartbeat": heartbeat}
    return control_size("session", window=window, **beat)
