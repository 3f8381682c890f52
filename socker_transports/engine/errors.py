"""The engine's typed errors."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of the engine's errors; raised itself when the store refused a
    command (an error reply, such as Redis out of memory)."""


class EngineUnavailable(EngineError):
    """The engine's store (Redis) cannot be reached: nothing was confirmed.

    Raised by `publish`, `join`, `leave`, `presence`, `fetch_since` and `position`
    while Redis is down or unreachable; the engine keeps reconnecting by itself, so a
    later call succeeds once Redis is back. A `publish` that raised may still have
    reached Redis if the connection broke after the command was sent (its reply was
    lost): the error means "not confirmed", not "certainly not published".
    """


class EngineClosed(EngineError):
    """The engine was used outside its `async with` block (not started or closed)."""
