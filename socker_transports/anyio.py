"""socker_transports.anyio: the async driver (asyncio, uvloop and trio via anyio).

A thin loop around `socker_transports.wire.Wire`: every protocol decision (the
handshake, limits, keepalive, close codes) comes from the wire; this module
only moves bytes, runs handlers and keeps time with `anyio.current_time()`.

How bytes move depends on the running backend: on asyncio (and uvloop) each
connection is an `asyncio.Protocol` with no task of its own
(`_asyncio_protocol`); on trio each connection is one task reading, writing and
keeping time (`_anyio_session._StreamSession`). Either way async handlers and
hooks run as tasks in the server's (or client's) task group, and leaving the
`async with` block leaves no task behind.

Server:

    async with serve(flow, "127.0.0.1", 8765, max_size=2**16) as server:
        print(server.url)
        await server.serve_forever()   # until server.close() / shutdown()

Client:

    result = await run_client("ws://127.0.0.1:8765/", client_flow)
    # or, to send from outside the flow:
    async with connect("ws://127.0.0.1:8765/", client_flow) as client:
        client.send(b"hello")
        result = await client.wait_closed()

`**options` are exactly the fields of `wire.Options`, with the same defaults
(typed as `Unpack[wire.OptionsDict]`: a misspelt name fails `mypy --strict`, and
raises TypeError at run time; a bad value raises `LocalProtocolError`).

Rooms and broadcast: `conn.join(room)` / `conn.leave(room)` in handlers, and
`server.broadcast(data, room=..., skip=...)` from any task on the loop (in a
handler, `conn.server` is the Server). The frame is built once and written to each
recipient at once: no task switch or cancel per recipient on any backend.

Threads: the driver, its handlers and `Connection.send` / `close` must be used
from the event loop's thread (any task on it: broadcasting from another task is
fine). From another thread use `anyio.from_thread`.

Errors: a rejected or failed opening handshake raises `HandshakeError` from
`connect()` (its `.result` carries the HTTP status) and is returned as a
`CloseResult` by `run_client()`. Failing to reach the server raises from both:
the `OSError` itself (`ConnectionRefusedError`, `socket.gaierror`,
`ssl.SSLError`...), or `TimeoutError` when TCP and TLS take longer than
`open_timeout`. Nothing the peer does after that raises: it ends in a close code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import ssl as ssl_module
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
import anyio.abc
import anyio.streams.stapled
from anyio.abc import SocketAttribute

from socker_core import (
    Connection,
    Flow,
    RoomRef,
)

from ._anyio_accept import _ServerAccept
from ._anyio_client import Client, connect, run_client
from ._anyio_shared import _SHUTDOWN_FALLBACK, _on_asyncio
from ._listen import bound_address, is_tcp, unix_listener
from .engine.cluster import ResyncHook
from .engine.interface import Engine
from .wire import (
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    EventHook,
    HandshakeError,
    HandshakeHook,
    HttpHandler,
    Options,
    OptionsDict,
    Wire,
    check_shutdown,
    format_host,
    send_through_flow,
    shutdown_reason,
)

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # a dependency on 3.10 only
    from typing_extensions import Unpack

# -- server ----------------------------------------------------------------------------


class Server(_ServerAccept):
    """A listening websocket server. Use `async with serve(...) as server:`.

    Leaving the `async with` block shuts down gracefully: stop accepting, close
    every connection with 1001, wait up to `close_timeout`, abort the rest.
    """

    # -- public ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL clients use (for a unix socket: ws://localhost, with the
        client's `unix_socket=` set to `server.unix_socket`)."""
        scheme = "wss" if self.ssl is not None else "ws"
        if self.unix_socket is not None:
            return f"{scheme}://localhost"
        return f"{scheme}://{format_host(self.host)}:{self.port}"

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections (handshake done, not yet closed). To send to all of
        them, or to a room, use `broadcast`."""
        return frozenset(conn for conn in self._open.values() if conn.is_open)

    @property
    def active(self) -> int:
        """Every connection still being served, including those mid-handshake and
        those whose on_close hooks are still running: the count `max_connections`
        bounds (503 refusals are not counted)."""
        return len(self._sessions)

    # -- rooms (the shared surface is _rooms_surface; here: what moves bytes) ----

    def adopted(self, wire: Wire) -> None:
        """A restored session now runs on `wire` (its driver's Opened follows; until
        then deliveries reach it through its Stepper, on this same loop)."""

    def wire_of(self, conn: Connection) -> Wire | None:
        """The wire that moves `conn`'s bytes now (None: detached, or not open)."""
        session = self._session_of.get(conn)
        return None if session is None else session.wire

    @property
    def keeps_sessions(self) -> bool:
        """True when resumable sessions live in the engine (any worker resumes them)."""
        return self._keeper is not None

    def _push(
        self,
        recipients: list[Connection],
        payload: bytes,
        frame: bytes,
        origin: RoomRef | None = None,
    ) -> int:
        sessions = self._session_of
        now = self._now()
        count = 0
        for conn in recipients:
            session = sessions.get(conn)
            if session is not None:
                if session.push_frame(frame, payload, now, origin):
                    count += 1
                elif conn.is_detached:
                    # Its old transport is still winding down, its Stepper detached
                    # already: the Stepper keeps the message for the replay.
                    count += send_through_flow(conn, payload, origin)
            else:
                # Still opening (a broadcast from its own on_open hook: its Stepper is
                # in a call, and takes the message in order), or detached (the Stepper
                # keeps the message for the replay when it resumes).
                count += send_through_flow(conn, payload, origin)
        return count

    def close(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Start a graceful shutdown; `await wait_closed()` for it to finish.

        The server stops accepting at once (new connections are refused). Then
        every live connection is closed with `code` (1001 "server shutting down";
        1012 "service restart" when a new release takes over) and given
        `close_timeout` to finish its close handshake before it is aborted.

        With `drain=True` live connections are first left to run to completion
        (their flows end, or their peers leave), for at most `drain_timeout`
        seconds (None: no bound); whatever is still open then is closed with
        `code` as above. A later `close()` without `drain` ends the drain at once.
        """
        check_shutdown(code, drain_timeout)
        if self._closing:
            if not drain and self._draining:
                self._draining = False
                if self._drain_scope is not None:
                    self._drain_scope.cancel()
            return
        self._closing = True
        self._close_code, self._close_reason = int(code), shutdown_reason(code)
        self._draining, self._drain_timeout = drain, drain_timeout
        if self._accepting is not None:
            self._accepting.cancel()

    async def wait_closed(self) -> None:
        """Wait until the server has stopped and every connection ended."""
        await self._stopped_event().wait()

    async def shutdown(
        self, code: int = SHUTDOWN_CODE, drain: bool = False, *, drain_timeout: float | None = None
    ) -> None:
        """Graceful shutdown (see `close`): returns when every connection has ended.
        If a shutdown is already under way, waits for that one."""
        if not self._closing:
            self.close(code, drain, drain_timeout=drain_timeout)
        await self._stopped_event().wait()

    async def serve_forever(self) -> None:
        """Wait until the server is shut down (by `close()` from another task)."""
        await self._stopped_event().wait()

    async def __aenter__(self) -> Server:
        if self._cm is not None:
            raise RuntimeError("a Server can be entered only once")
        self._cm = self._lifecycle()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    # -- internals ---------------------------------------------------------------

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Server]:
        self._stopped = stopped = anyio.Event()
        self._idle = anyio.Event()
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream]
        if self.sock is not None or self.unix_socket is not None:
            raw = self.sock if self.sock is not None else unix_listener(self.unix_socket or "", 128)
            listener = anyio.streams.stapled.MultiListener(
                [await anyio.abc.SocketListener.from_socket(raw)]
            )
            host, port = bound_address(raw)
            if is_tcp(raw):
                self.host, self.port = host, port
        else:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self._requested_port, reuse_port=self.reuse_port
            )
            self.port = listener.listeners[0].extra(SocketAttribute.local_port)
        main = self._main_asyncio if _on_asyncio() else self._main_streams
        body_error: BaseException | None = None
        cluster = self._cluster
        try:
            # The engine (if any) is entered before the first connection and exited
            # after the last one ended, its queue drained (their leaves) first.
            async with (
                cluster if cluster is not None else contextlib.nullcontext(),
                anyio.create_task_group() as tg,
            ):
                if self._keeper is not None:
                    await tg.start(self._keeper.run)
                await tg.start(main, listener)
                try:
                    yield self
                except BaseException as exc:
                    # Re-raised below, outside the task group (which would wrap it
                    # in an exception group).
                    body_error = exc
                bound = self.options.close_timeout
                if not self._closing:
                    self.close()
                drain = self._drain_timeout if self._draining else 0.0
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(
                        (_SHUTDOWN_FALLBACK if bound is None else bound)
                        + 1.0
                        + (math.inf if drain is None else drain)
                    ),
                ):
                    await self.shutdown()
                tg.cancel_scope.cancel()
        finally:
            await anyio.aclose_forcefully(listener)
            if self.unix_socket is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_socket)
            stopped.set()
        if body_error is not None:
            raise body_error


def serve(
    routes: Flow | Mapping[str, Flow],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    handshake_hook: HandshakeHook | None = None,
    http_handler: HttpHandler | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    unix_socket: str | None = None,
    on_event: EventHook | None = None,
    logger: logging.Logger | None = None,
    engine: str | Engine | None = None,
    on_resync: ResyncHook | None = None,
    **options: Unpack[OptionsDict],
) -> Server:
    """A websocket server for `routes` (one Flow, or a mapping path -> Flow: 404
    for other paths). Use as `async with serve(...) as server:`; port 0 picks a
    free port (see `server.port` / `server.url`).

    Where it listens: `host:port` (with SO_REUSEPORT when `reuse_port=True`, so
    several processes can share a port), or `sock=`, an already bound and
    listening socket (systemd socket activation, a supervisor; the server closes
    it when it stops), or `unix_socket=`, a path for a unix-domain socket
    (a stale socket file is replaced, and removed when the server stops).

    `on_event` receives every connection's `wire.observe` events (see
    `socker_transports.metrics` for a Prometheus exporter); `logger` replaces
    the "socker" logger for this server and its connections.

    `engine` makes rooms cluster-wide (README "Scale-out"): a URL (`"memory://"`,
    `"redis://HOST:PORT/DB"`, `"unix:///path"`; see `engine.open_engine`) or an
    `Engine` instance; either way the server enters it when it starts (before the
    first connection: a Redis that cannot be reached then fails the start) and
    exits it when it stops, so pass an instance not entered elsewhere. `server.engine`
    is it. `on_resync(event, members)` is told when a room's sequence had a gap
    history could not fill (default: close those members with 4414)."""
    return Server(
        routes,
        host,
        port,
        ssl=ssl,
        handshake_hook=handshake_hook,
        http_handler=http_handler,
        options=Options(**options),
        sock=sock,
        reuse_port=reuse_port,
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        engine=engine,
        on_resync=on_resync,
    )


__all__ = [
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Client",
    "HandshakeError",
    "Server",
    "connect",
    "run_client",
    "serve",
]
