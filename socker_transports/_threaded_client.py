"""The threaded driver's client: `ClientConnection`, `connect` and `run_client`."""

from __future__ import annotations

import logging
import socket
import ssl as ssl_module
import sys
import threading
from collections.abc import Sequence
from time import monotonic
from types import TracebackType

from socker_core import Connection, Flow, LocalProtocolError, is_sendable_close_code

from ._listen import is_tcp
from ._threaded_link import _Link, send_threadsafe
from ._threaded_runner import _AsyncRunner
from .wire import (
    ClientTarget,
    CloseResult,
    EventHook,
    HandshakeError,
    Options,
    OptionsDict,
    Wire,
    format_host,
    socket_address,
)

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # a dependency on 3.10 only
    from typing_extensions import Unpack

_SOCKER_LOGGER = logging.getLogger("socker")


class ClientConnection:
    """A client connection running its flow on its own thread. Use `connect(...)`:

        with connect(url, flow) as client:
            client.send(b"hello")            # from any thread
            result = client.wait_closed(5)

    Leaving the `with` block closes with 1000 if the connection is still open (1011 if
    the block raised), waits for it to end (aborting after `close_timeout`) and joins
    its threads.
    """

    def __init__(self, link: _Link) -> None:
        self._link = link

    @property
    def reconnects(self) -> int:
        """Transports opened after the first one (resume attempts that got a 101)."""
        return self._link.reconnects

    @property
    def conn(self) -> Connection:
        """The socker Connection (the same `conn` the handlers get)."""
        stepper = self._link.session_wire.stepper
        assert stepper is not None  # connect() raised HandshakeError otherwise
        return stepper.conn

    @property
    def wire(self) -> Wire:
        """The connection's `Wire` (sans-I/O protocol state)."""
        return self._link.wire

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, or None."""
        return self._link.wire.subprotocol

    @property
    def closed(self) -> bool:
        """True once the connection has ended (see `wait_closed`)."""
        return self._link.ended

    def send(self, data: bytes) -> None:
        """Send one binary message; safe from any thread and never blocks (the
        connection's thread sends it, in call order). Raises ConnectionClosedError
        once the connection is closing."""
        send_threadsafe(self.conn, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (a no-op once closing). Returns at once: use
        `wait_closed()` to wait for the end."""
        if not is_sendable_close_code(code):
            raise LocalProtocolError(f"close code {code} cannot be sent in a close frame")
        if len(reason.encode("utf-8")) > 123:
            raise LocalProtocolError("close reason is longer than 123 bytes of UTF-8")
        self._link.request_close(code, reason)

    def abort(self) -> None:
        """Drop the connection without a close handshake (reported as 1006)."""
        self._link.kill()

    def wait_closed(self, timeout: float | None = None) -> CloseResult:
        """Wait until the connection ends (flow complete, closed or lost) and return
        how it ended. Raises TimeoutError after `timeout` seconds."""
        link = self._link
        if not link.wait_ended(timeout):
            raise TimeoutError(f"the connection is still open after {timeout} s")
        if link is not threading.current_thread():
            link.join()
        assert link.result is not None
        return link.result

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        link = self._link
        if not link.ended:
            if exc_type is None:
                self.close(1000, "")
            else:
                self.close(1011, "client error")
        if link is threading.current_thread():
            return  # leaving the block from one of this connection's own handlers
        if not link.wait_ended(link.grace + 1.0):
            link.kill()
        link.join()


def connect(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    reconnect: bool = False,
    **options: Unpack[OptionsDict],
) -> ClientConnection:
    """Connect to `url` (ws:// or wss://) and run `flow` on a background thread.

    `reconnect=True`: on a lost transport the connection's thread reconnects
    (exponential backoff with jitter: `socker_core.reconnect_delay`) and resumes
    the session at its step; `wait_closed()` returns when the session ends.

    Returns once the opening handshake succeeded. A rejected or failed handshake
    raises `HandshakeError` (its `.result` carries the HTTP status); failing to reach
    the server (refused, DNS, TLS, `open_timeout`) raises the `OSError` (or
    `ssl.SSLError`) unchanged. `wss://` uses `ssl` (default: a verifying
    `ssl.create_default_context()`). `options` are the `wire.Options` fields.
    With `unix_socket=` the client connects to that unix-domain socket; the URL
    still gives the Host header and the path (`ws://localhost/game`).
    """
    opts = Options(**options)
    flow.validate()
    where = ClientTarget.parse(url)
    secure, host, port, host_header, target = (
        where.secure,
        where.host,
        where.port,
        where.host_header,
        where.path,
    )
    if ssl is not None and not secure:
        raise ValueError("ssl= needs a wss:// URL")
    if unix_socket is not None and secure:
        raise ValueError("unix_socket= serves ws:// only (TLS over a unix socket is not offered)")
    tls = (ssl or ssl_module.create_default_context()) if secure else None
    timeout = opts.open_timeout
    peer = f"unix:{unix_socket}" if unix_socket is not None else f"{format_host(host)}:{port}"

    def dial() -> socket.socket:
        started = monotonic()
        if unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(unix_socket)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if is_tcp(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                if timeout is not None:
                    sock.settimeout(max(0.001, started + timeout - monotonic()))
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def make_wire(sock: socket.socket, started: float, resume_from: Wire | None) -> Wire:
        wire = Wire.client(
            flow,
            host_header,
            started,
            opts,
            path=target,
            origin=origin,
            headers=headers,
            peer=peer,
            on_event=on_event,
            logger=logger,
            reconnect=reconnect,
            resume_from=resume_from,
        )
        wire.remote_address = socket_address(sock.getpeername())
        return wire

    def redial(holder: Wire) -> tuple[socket.socket, Wire] | None:
        started = monotonic()
        try:
            sock = dial()
        except OSError as exc:
            (logger or _SOCKER_LOGGER).info("socker: client %s: reconnect failed: %s", peer, exc)
            return None
        return sock, make_wire(sock, started, holder)

    started = monotonic()
    sock = dial()
    try:
        wire = make_wire(sock, started, None)
        link = _Link(
            sock,
            wire,
            _AsyncRunner(f"socker-client-{peer}"),
            name=f"socker-client-{peer}",
            own_runner=True,
            waitable=True,
            redial=redial if reconnect else None,
        )
    except BaseException:
        sock.close()
        raise
    link.start()
    try:
        link.wait_opened()
        if wire.handshake_status != 101:
            link.wait_ended()
            link.join()
            assert link.result is not None
            raise HandshakeError(link.result)
    except HandshakeError:
        raise
    except BaseException:  # Ctrl-C while waiting
        link.kill()
        link.join()
        raise
    return ClientConnection(link)


def run_client(
    url: str,
    flow: Flow,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    **options: Unpack[OptionsDict],
) -> CloseResult:
    """Connect to `url`, run `flow` to its end and return how the connection ended.

    Keywords are those of `connect`. A rejected handshake is a result
    (`handshake_status` is the HTTP status), not an error; an unreachable server
    raises OSError.
    """
    try:
        client = connect(url, flow, ssl=ssl, origin=origin, headers=headers, **options)
    except HandshakeError as exc:
        return exc.result
    with client:
        return client.wait_closed()
