"""When an ASGI `App` holds its cluster engine: from the first lifespan startup or
websocket scope, whichever comes first, to `App.shutdown()`.

ASGI servers send `lifespan` to the top application only: Starlette and FastAPI do
not forward it to a mounted App, so an App cannot count on a startup event. It
enters the engine on the first one it gets (lifespan startup, or the first
websocket scope, the concurrent first connections all waiting on the one entry),
and keeps it entered in a task of its own: an ASGI server gives the App no task
that outlives one scope, and anyio's context managers must be exited by the task
that entered them. On asyncio that task is an ordinary loop task (the App keeps a
reference to it); on trio, a system task (trio's tasks need a nursery otherwise).

An entry that fails (the store is unreachable: EngineUnavailable, as when a native
server starts) is reported to every caller waiting on it; the next caller tries
again (as after an engine that failed once entered), so a worker that started
while Redis was down recovers without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import sniffio

from ..engine.cluster import ClusterRooms


class EngineLifetime:
    """Enter `cluster` once, hold it in a task of its own, exit it on `release`."""

    def __init__(self, cluster: ClusterRooms, log: logging.Logger) -> None:
        self.cluster = cluster
        self.log = log
        self._entered: anyio.Event | None = None  # set once the current attempt ended
        self._error: BaseException | None = None  # why the current attempt failed
        self._release: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._task: Any = None  # the asyncio task (a reference keeps it alive)
        self._released = False

    @property
    def running(self) -> bool:
        """True once the engine is entered, until it is exited (False while an
        entry is still under way: callers must wait for it in `enter`)."""
        entered, done = self._entered, self._done
        return (
            entered is not None
            and entered.is_set()
            and self._error is None
            and done is not None
            and not done.is_set()
        )

    async def enter(self) -> BaseException | None:
        """Enter the engine (once; concurrent callers wait for the same attempt).
        None once entered, else the error of the failed attempt."""
        if self._released:
            return RuntimeError("the App's engine was released (the App shut down)")
        if self._entered is None or (self._done is not None and self._done.is_set()):
            # The first entry, or the last attempt failed (or the engine failed
            # after it was entered): try again.
            self._entered = anyio.Event()
            self._error = None
            self._release = anyio.Event()
            self._done = anyio.Event()
            self._task = _spawn(self._hold)
        await self._entered.wait()
        return self._error

    async def release(self, timeout: float | None) -> None:
        """Exit the engine (its queue drained first, bounded by the cluster's own
        drain_timeout) and wait at most `timeout` seconds for it to be exited."""
        self._released = True
        if self._release is None or self._done is None:
            return
        self._release.set()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await self._done.wait()

    async def _hold(self) -> None:
        entered, release, done = self._entered, self._release, self._done
        assert entered is not None and release is not None and done is not None
        try:
            async with self.cluster:
                entered.set()
                await release.wait()
        except Exception as exc:
            if not entered.is_set():
                self._error = exc
                self.log.error("asgi: the engine could not be entered: %s", exc)
            else:
                self.log.exception("asgi: the engine failed")
        finally:
            entered.set()
            done.set()
            self._task = None


def _spawn(func: Callable[[], Coroutine[Any, Any, None]]) -> Any:
    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(func)
        return None
    return asyncio.get_running_loop().create_task(func())
