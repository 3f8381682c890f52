"""The threaded Server's session store: many connection threads share it."""

from __future__ import annotations

import threading
from typing import Any

from socker_core import (
    Flow,
    MemorySessionStore,
)


class _LockedStore:
    """A SessionStore shared by many connection threads: one lock around each call
    (a resume on one link hands the session over from another link)."""

    def __init__(self, store: MemorySessionStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    def add(self, session: Any, now: float) -> None:
        with self._lock:
            self.store.add(session, now)

    def claim(self, token: str, route: str, flow: Flow, new_token: str, now: float) -> Any:
        with self._lock:
            return self.store.claim(token, route, flow, new_token, now)

    def confirm(self, session: Any, now: float) -> None:
        with self._lock:
            self.store.confirm(session, now)

    def end(self, session: Any, code: int, now: float) -> None:
        with self._lock:
            self.store.end(session, code, now)

    def __len__(self) -> int:
        with self._lock:
            return len(self.store)
