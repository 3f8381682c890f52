"""The OS limits a server's connection count must stay under, and the default
`max_connections` both drivers derive from them (one decision, one place).

A connection costs the anyio driver one file descriptor and the threaded driver two
(its socket and its wake-up eventfd) plus one thread. Past the process's descriptor
limit `accept` fails (EMFILE) and the connection is dropped with no HTTP status;
past the thread limit the threaded driver cannot start the connection's thread.
The default keeps a reserve below both so that a server at its cap still answers
503 (which needs a descriptor for a moment) and keeps its own files, listener and
helper threads working.
"""

from __future__ import annotations

import contextlib
import threading

#: Descriptors left for the listener, logs, the application's files, and the
#: short-lived sockets of 503 refusals.
FD_RESERVE = 64
#: Threads left for the accept thread, the async runner, the application's own.
THREAD_RESERVE = 32
#: The cap when the OS reports no limit at all.
UNLIMITED_CAP = 1 << 20


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when there is none (or it cannot be read)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open(path) as file:
            text = file.read().strip()
        return None if text == "max" else int(text)
    return None


def thread_limit() -> int | None:
    """How many more threads this process may start, by the lowest limit it can read:
    RLIMIT_NPROC (which counts every thread of the user: only ours are known, so
    this is an upper bound), kernel.threads-max and the pids cgroup (v1 or v2).
    None when no limit is readable."""
    limits: list[int] = []
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY:
            limits.append(int(soft))
    for path in (
        "/proc/sys/kernel/threads-max",
        "/sys/fs/cgroup/pids.max",
        "/sys/fs/cgroup/pids/pids.max",
    ):
        value = _read_int(path)
        if value is not None:
            limits.append(value)
    if not limits:
        return None
    return max(0, min(limits) - threading.active_count())


def default_max_connections(*, fds_per_connection: int, threads_per_connection: int) -> int:
    """The largest connection count that stays under the descriptor and thread limits
    (with their reserves); at least 1."""
    best = UNLIMITED_CAP
    fds = descriptor_limit()
    if fds is not None:
        best = min(best, (fds - FD_RESERVE) // fds_per_connection)
    if threads_per_connection:
        threads = thread_limit()
        if threads is not None:
            best = min(best, (threads - THREAD_RESERVE) // threads_per_connection)
    return max(1, best)


def effective_max_connections(
    requested: int | None, *, fds_per_connection: int, threads_per_connection: int
) -> int:
    """`Options.max_connections` as a driver applies it: the value given, or the
    default for this driver's cost per connection when None."""
    if requested is not None:
        return requested
    return default_max_connections(
        fds_per_connection=fds_per_connection, threads_per_connection=threads_per_connection
    )


__all__ = [
    "default_max_connections",
    "descriptor_limit",
    "effective_max_connections",
    "thread_limit",
]
