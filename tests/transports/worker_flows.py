"""Flows for the worker tests: each connection is told which process serves it."""

from __future__ import annotations

import os
import sys

from socker_core import Flow

pid_server = Flow("pid")


@pid_server.on_open
def tell_pid(conn: object) -> None:
    conn.send(str(os.getpid()).encode())  # type: ignore[attr-defined]


@pid_server.step
def echo(conn: object, message: bytes) -> bool:
    conn.send(message)  # type: ignore[attr-defined]
    return False


def run_with_shared_socket() -> None:
    """`python -m tests.transports.worker_flows PORT`: workers.run from Python, without
    SO_REUSEPORT (one inherited listening socket)."""
    from socker_transports import workers

    def announce(supervisor: workers.Supervisor) -> None:
        print(f"socker: serving on {supervisor.url} pids {supervisor.pids}", flush=True)

    sys.exit(
        workers.run(
            pid_server,
            workers=2,
            port=int(sys.argv[1]),
            reuse_port=False,
            announce=announce,
            close_timeout=2,
        )
    )


if __name__ == "__main__":
    run_with_shared_socket()
