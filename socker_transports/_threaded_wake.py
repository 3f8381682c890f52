"""How the threaded driver's threads wake one another: a wake-up fd per connection
(`_Waker`) and `poll` on it plus a socket (`_wait`)."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from typing import Any

# What other threads post to a connection's thread (`_Waker.post`): (kind, a, b).
_SEND = 0  # (_SEND, data, None)
_CLOSE = 1  # (_CLOSE, code, reason)
_RESUME = 2  # (_RESUME, token, future): an awaited handler or hook settled
_FRAME = 3  # (_FRAME, frame, data): a broadcast's prebuilt frame (`Wire.send_frame`)


class _Waker:
    """A file descriptor `poll` can wait on, made readable from any thread; also a
    mailbox: items `post`ed from any thread wait (in order) for the owner's `take`.
    Slotted, and the mailbox list exists only while it holds something: an idle
    connection keeps no per-connection queue objects."""

    __slots__ = ("_closed", "_fd", "_lock", "_mail", "_pair")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._mail: list[tuple[int, Any, Any]] | None = None
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if sys.platform == "linux":
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - exercised on other platforms only
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._pair = (reader, writer)
            self._fd = reader.fileno()

    def fileno(self) -> int:
        return self._fd

    def wake(self) -> None:
        with self._lock:  # never write to a closed (and perhaps reused) fd
            if not self._closed:
                self._signal()

    def post(self, item: tuple[int, Any, Any]) -> None:
        """Queue `item` for the owner and wake it (dropped once closed)."""
        with self._lock:
            if self._closed:
                return
            if self._mail is not None:
                # Not taken yet since the post that signalled: the owner takes this
                # one with it (it takes under this lock, after draining the fd).
                self._mail.append(item)
                return
            self._mail = [item]
            self._signal()

    @property
    def empty(self) -> bool:
        """Nothing posted waits (a peek: a post may land right after)."""
        return self._mail is None

    def take(self) -> list[tuple[int, Any, Any]] | None:
        """Everything posted since the last `take`, in order (None: nothing)."""
        if self._mail is None:  # a racy peek: a post landing now also wakes the owner
            return None
        with self._lock:
            mail, self._mail = self._mail, None
        return mail

    def _signal(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_write(self._fd, 1)
            else:  # pragma: no cover
                self._pair[1].send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already readable (or closing): the waiter will wake anyway

    def drain(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_read(self._fd)
            else:  # pragma: no cover
                while self._pair[0].recv(4096):
                    pass
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mail = None
            if self._pair is None:
                os.close(self._fd)
            else:  # pragma: no cover
                for sock in self._pair:
                    sock.close()


def _wait(
    fd: int | None, read: bool, write: bool, waker: int, timeout: float | None
) -> tuple[bool, bool, bool, bool]:
    """Wait for the socket (read/write) or the waker.
    Returns (readable, writable, error, woken): drain the waker only when woken."""
    if hasattr(select, "poll"):
        poller = select.poll()
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        if fd is not None:
            poller.register(fd, mask)
        poller.register(waker, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        readable = writable = error = woken = False
        for ready_fd, events in ready:
            if ready_fd != fd:
                woken = True
                continue
            readable = bool(events & select.POLLIN)
            writable = bool(events & select.POLLOUT)
            error = bool(events & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
        return readable, writable, error, woken
    rlist = [waker] + ([fd] if fd is not None and read else [])  # pragma: no cover
    wlist = [fd] if fd is not None and write else []  # pragma: no cover
    r, w, _ = select.select(rlist, wlist, [], timeout)  # pragma: no cover
    return fd in r, fd in w, False, waker in r  # pragma: no cover
