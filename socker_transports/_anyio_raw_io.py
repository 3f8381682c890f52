"""The raw I/O under the anyio sessions: the per-thread read buffer the
asyncio protocol and bare-socket reads share, the read sizes, the errors a stream
raises when its transport fails, and trio's own socket primitives (`RawIO`)
used instead of anyio's stream wrappers on the hot path."""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel

#: Bytes asked for per read of a stream (TLS): one read carries many small
#: messages, and 64 KiB stays under glibc's mmap threshold (a `recv` of 256 KiB
#: costs an mmap, an mremap and a munmap however little arrives).
READ_SIZE = 64 * 1024

#: Bytes per read of a bare socket (or asyncio's buffered protocol): read into a
#: buffer of this size allocated once per thread, handed to the wire as a view
#: (the wire copies out what it keeps before the next read).
BIG_READ_SIZE = 256 * 1024


_local = threading.local()


def shared_read_buffer() -> memoryview:
    """This thread's BIG_READ_SIZE buffer. Safe to share between all the
    connections of an event loop (one thread): every read copies out what it got
    at once."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(BIG_READ_SIZE))
    return buffer


#: Errors a byte stream raises when the transport fails under us.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class RawIO(NamedTuple):
    """The backend's own primitives for a plain socket (trio's), used instead of
    anyio's stream wrappers on the hot path."""

    wait_readable: Callable[[socket.socket], Awaitable[None]]
    wait_writable: Callable[[socket.socket], Awaitable[None]]
    cancel_scope: Callable[..., Any]  # (deadline=...) -> a scope with .cancel()
    current_time: Callable[[], float]
    close: Callable[[socket.socket], None]  # close a socket others may wait on
    checkpoint: Callable[[], Awaitable[None]]  # let every other task run


def trio_raw_io() -> RawIO | None:
    """trio's primitives when trio is the running backend, else None."""
    try:
        import sniffio
        import trio
    except ImportError:  # pragma: no cover
        return None
    try:
        if sniffio.current_async_library() != "trio":
            return None
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover
        return None

    def close(sock: socket.socket) -> None:
        trio.lowlevel.notify_closing(sock)
        sock.close()

    return RawIO(
        trio.lowlevel.wait_readable,
        trio.lowlevel.wait_writable,
        trio.CancelScope,
        trio.current_time,
        close,
        trio.lowlevel.checkpoint,
    )
