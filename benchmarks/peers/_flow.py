"""The socker flow every socker server runs: one staying step that echoes."""

from __future__ import annotations

from socker_core import Connection, Flow


def echo_flow() -> Flow:
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    return flow
