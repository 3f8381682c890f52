"""The threaded driver's private asyncio loop: one thread running the `async def`
handlers of a server (or of a client connection), each step under its connection's lock."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Generator
from typing import Any

logger = logging.getLogger("socker")


class _Locked:
    """Await `awaitable`, running each of its steps while holding `lock`."""

    __slots__ = ("_awaitable", "_lock")

    def __init__(self, awaitable: Awaitable[object], lock: threading.RLock) -> None:
        self._awaitable = awaitable
        self._lock = lock

    def __await__(self) -> Generator[Any, Any, object]:
        with self._lock:
            iterator: Any = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                try:
                    yielded = iterator.throw(error) if error is not None else iterator.send(value)
                except StopIteration as stop:
                    return stop.value
            try:
                value = yield yielded
                error = None
            except GeneratorExit:
                with self._lock:
                    iterator.close()
                raise
            except BaseException as exc:
                value, error = None, exc


async def _drive(awaitable: Awaitable[object], lock: threading.RLock) -> object:
    return await _Locked(awaitable, lock)


def _discard(awaitable: Awaitable[object]) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


class _AsyncRunner:
    """One private asyncio event loop in its own thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._futures: set[concurrent.futures.Future[object]] = set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(
        self, awaitable: Awaitable[object], lock: threading.RLock
    ) -> concurrent.futures.Future[object]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the driver's event loop is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run, args=(loop,), name=f"{self._name}-asyncio", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            future = asyncio.run_coroutine_threadsafe(_drive(awaitable, lock), self._loop)
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def close(self, timeout: float) -> None:
        """Let pending coroutines finish (bounded by `timeout`), cancel the rest, stop."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():  # pragma: no cover - misuse guard
            loop.stop()
            return
        pending = list(self._futures)
        if pending:
            _, late = concurrent.futures.wait(pending, timeout)
            for future in late:
                future.cancel()
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout + 1.0)
        if thread.is_alive():  # pragma: no cover - a coroutine ignoring cancellation
            logger.warning("socker: %s event loop did not stop in time", self._name)
