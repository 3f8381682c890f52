"""The flow the kill -9 resume test serves with `socker serve --workers 2 --engine`:
every player joins room "match" and is told which worker process serves it; the
room's messages come from the test's own publisher (another process on the Redis)."""

from __future__ import annotations

import os

from socker_core import Connection, Flow

player = Flow("xresume-player", resume_window=30.0)


@player.on_open
def join(conn: Connection) -> None:
    conn.join("match")
    conn.send(b"pid:%d" % os.getpid())


@player.on_resume
def tell(conn: Connection) -> None:
    conn.send(b"resumed:%d" % os.getpid())


@player.step
def play(conn: Connection, message: bytes) -> bool:
    return False
