"""Cluster rooms for the threaded driver: `ClusterRooms` (cluster.py) for threads.

The engine runs behind a `BlockingEngine` (its own event loop in one background
thread, where the receiver runs and delivers); one thread of this object applies the
ordered queue of joins, leaves and publications with blocking calls. The registry's
listener runs on connection threads inside the registry's guard, so it only appends
to the queue (never blocks on the engine: the engine's thread takes that guard too
when it delivers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

from socker_core import Connection

from .blocking import BlockingEngine
from .cluster import (
    _JOIN_RETRY,
    _Barrier,
    _Bridge,
    _Join,
    _Leave,
    _Op,
    _Publish,
    _ThreadWaiter,
)
from .errors import EngineClosed, EngineUnavailable
from .events import StreamPosition


class BlockingClusterRooms(_Bridge):
    """`ClusterRooms` for threads: `engine` runs behind a `BlockingEngine` (its own
    loop thread, where the receiver runs) and one thread of this object applies the
    queue. `start()` / `close()`; `broadcast` and `publish` block until the store has
    the publication (EngineUnavailable when it cannot)."""

    def _init_driver(self) -> None:
        self.blocking = BlockingEngine(self.engine)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._loop_thread: int | None = None

    @property
    def available(self) -> bool:
        return self.blocking.available

    def start(self) -> None:
        self.blocking.__enter__()
        try:
            self._loop_thread = self.blocking._call().call(threading.get_ident)
            self._bind(self.blocking)
        except BaseException:
            self.blocking.__exit__(None, None, None)
            raise
        self._thread = threading.Thread(
            target=self._apply_queue, name="socker-engine-queue", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Let queued changes reach the engine (at most `drain_timeout`), stop."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        thread.join(self.drain_timeout)
        try:
            self._unbind(self.blocking)
            self.blocking.__exit__(None, None, None)
        finally:
            with self._changed:
                self._abandon()

    def _enqueue(self, op: _Op) -> None:
        with self._changed:
            if self._closed:  # nothing applies the queue any more
                if isinstance(op, _Publish):
                    self._failed(op, EngineClosed("the server's engine is closed"))
                elif isinstance(op, _Barrier):
                    op.waiter.settle(None, EngineClosed("the server's engine is closed"))
                return
            self._ops.append(op)
            self._changed.notify()

    def _on_own_threads(self) -> bool:
        ident = threading.get_ident()
        thread = self._thread
        return ident == self._loop_thread or (thread is not None and ident == thread.ident)

    def broadcast(
        self, data: bytes, room: str, skip: Connection | Collection[Connection] | None
    ) -> int:
        """Publish to `room` cluster-wide and wait for the store (from the engine's
        own threads, an on_resync hook say, it only queues); the local members it
        will reach."""
        self._refuse_if_down()
        count = self.local_count(room, skip)
        if self._on_own_threads():
            self._enqueue(self._publication(data, room, skip, None))
        else:
            self.publish(data, room, skip)
        return count

    def publish(
        self, data: bytes, room: str, skip: Connection | Collection[Connection] | None
    ) -> StreamPosition:
        if self._on_own_threads():
            raise RuntimeError("publish() would wait for its own thread: use broadcast()")
        self._refuse_if_down()
        waiter = _ThreadWaiter()
        self._enqueue(self._publication(data, room, skip, waiter))
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def settled(self) -> None:
        """Block until every change queued before has reached the engine (not from
        the engine's own threads)."""
        waiter = _ThreadWaiter()
        self._enqueue(_Barrier(waiter))
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def presence(self, room: str) -> dict[str, dict[str, str]]:
        self._refuse_if_down()
        if not self._on_own_threads():
            waiter = _ThreadWaiter()
            self._enqueue(_Barrier(waiter))
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
        return self.blocking.presence(room)

    def _apply_queue(self) -> None:
        ops, changed = self._ops, self._changed
        publish_many = getattr(self.engine, "publish_many", None)
        while True:
            with changed:
                while not ops and not self._stopping:
                    changed.wait()
                if not ops:
                    return
                op = ops[0]
                batch = self._batch() if publish_many is not None else []
            if publish_many is not None and len(batch) > 1:
                # Many threads broadcasting at once: their publications go in one
                # round trip (in queue order), each caller told its own outcome.
                try:
                    results: Any = self.blocking._call().call(
                        publish_many, [(p.room, p.blob) for p in batch]
                    )
                except Exception as exc:
                    results = exc
                self._settle_batch(batch, results)
                with changed:
                    for _ in batch:
                        ops.popleft()
                continue
            try:
                self._apply(op)
            except Exception:  # the engine stopped under us: abandon the rest
                self.log.exception("the engine's queue stopped")
                with changed:
                    self._abandon()  # no waiter is left waiting
                return
            with changed:
                ops.popleft()

    def _apply(self, op: _Op) -> None:
        engine = self.blocking
        if isinstance(op, _Publish):
            try:
                position = engine.publish(op.room, op.blob)
            except Exception as exc:
                self._failed(op, exc)
            else:
                if op.waiter is not None:
                    op.waiter.settle(position, None)
        elif isinstance(op, _Join):
            delay = _JOIN_RETRY[0]
            while True:
                try:
                    position = engine.join(op.room, op.conn.id, op.info)
                    if self.on_joined is not None:
                        self.on_joined(op.conn, op.room, position)
                    return
                except EngineUnavailable as exc:
                    if not self._member(op) or self._stopping:
                        return
                    level = logging.WARNING if delay == _JOIN_RETRY[0] else logging.DEBUG
                    self.log.log(level, "room %r: join retried in %.2fs: %s", op.room, delay, exc)
                except Exception:
                    self.log.exception("room %r: the engine refused a join", op.room)
                    return
                with self._changed:
                    self._changed.wait_for(lambda: self._stopping, delay)
                delay = min(_JOIN_RETRY[1], delay * 2)
        elif isinstance(op, _Leave):
            try:
                engine.leave(op.room, op.conn.id)
            except EngineUnavailable as exc:
                self.log.warning("room %r: leave not confirmed: %s", op.room, exc)
            except Exception:
                self.log.exception("room %r: the engine refused a leave", op.room)
        else:
            op.waiter.settle(None, None)


__all__ = ["BlockingClusterRooms"]
