"""Where a server listens and how a client reaches it, shared by both drivers:
TCP on host:port (optionally SO_REUSEPORT), a socket someone else opened
(systemd socket activation, a supervisor: `sock=`), or a unix-domain socket.

Each server takes exactly one of (host, port), `sock=` or `unix_socket=`.
"""

from __future__ import annotations

import os
import socket
import stat


def check_listening(sock: socket.socket) -> None:
    """`sock` must be a bound, listening stream socket (what `sock=` takes)."""
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"sock= needs a SOCK_STREAM socket, got {sock.type!r}")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:  # a closed socket, or a platform without SO_ACCEPTCONN
        raise ValueError(f"sock= is not usable: {exc}") from exc
    if not listening:
        raise ValueError("sock= must already be listening (call sock.listen())")


def unix_listener(path: str, backlog: int) -> socket.socket:
    """A listening unix-domain socket at `path`; a stale socket file left by a
    previous run is replaced, any other file is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_listener(host: str, port: int, backlog: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on host:port (0: an ephemeral port)."""
    info = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            option = getattr(socket, "SO_REUSEPORT", None)
            if option is None:
                raise ValueError("reuse_port=True: SO_REUSEPORT is not available here")
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind(info[4])
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def check_choice(sock: socket.socket | None, unix_socket: str | None, reuse_port: bool) -> None:
    if sock is not None and unix_socket is not None:
        raise ValueError("give sock= or unix_socket=, not both")
    if reuse_port and (sock is not None or unix_socket is not None):
        raise ValueError("reuse_port= applies to a TCP host:port only")


def is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def bound_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) of a TCP listener; (path, 0) of a unix one."""
    name = sock.getsockname()
    if is_tcp(sock):
        return str(name[0]), int(name[1])
    return (name.decode() if isinstance(name, bytes) else str(name)), 0


__all__ = [
    "bound_address",
    "check_choice",
    "check_listening",
    "is_tcp",
    "tcp_listener",
    "unix_listener",
]
