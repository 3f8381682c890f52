"""Running a `blocking=True` step in a worker thread (anyio driver, ASGI App).

The Stepper calls `run_blocking_in_thread(handler, conn, message)` instead of the
handler (see `Stepper.run_blocking`); the coroutine it returns is awaited like an
async handler's, so later messages wait in order. The handler runs in one of
anyio's worker threads (`anyio.to_thread.run_sync`, at most 40 at once by
default) with a `conn` whose `send` and `close` hop back to the event loop
(`anyio.from_thread`): every Stepper call still happens on the loop's thread.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
import anyio.to_thread

from socker_core import Connection


class LoopConnection:
    """`conn` as a worker thread sees it: `send` and `close` run on the event
    loop (and wait for it); everything else reads the real connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def send(self, data: bytes) -> None:
        anyio.from_thread.run_sync(self._conn.send, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        anyio.from_thread.run_sync(self._conn.close, code, reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_conn":
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)

    def __repr__(self) -> str:
        return f"<LoopConnection of {self._conn!r}>"


async def run_blocking_in_thread(handler: Any, conn: Connection, message: bytes) -> Any:
    """`handler(conn, message)` in a worker thread; its result for the Stepper."""
    return await anyio.to_thread.run_sync(handler, LoopConnection(conn), message)
