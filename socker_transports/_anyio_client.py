"""The anyio Client: connect (asyncio Protocol or trio stream), the opening
handshake, and with reconnect=True the reconnect-and-resume lifecycle; `connect`
and `run_client` build it. Public through `socker_transports.anyio`."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl as ssl_module
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.streams.stapled
from anyio.abc import SocketAttribute

from socker_core import (
    Connection,
    Flow,
    reconnect_delay,
)

from ._anyio_raw_io import trio_raw_io
from ._anyio_session import _StreamSession
from ._anyio_session_base import Spawn, _SessionBase
from ._anyio_shared import _SHUTDOWN_FALLBACK, _SOCKER_LOGGER, _on_asyncio
from ._asyncio_protocol import asyncio_spawner, session_factory, ssl_timeouts
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


class Client:
    """A client connection running `flow`. Use `async with connect(...) as client:`.

    Entering returns once the opening handshake succeeded (else `HandshakeError`);
    leaving waits for the flow to end, closing with 1000 if it is still open (1011
    if the block raised).
    """

    def __init__(
        self,
        url: str,
        flow: Flow,
        *,
        ssl: ssl_module.SSLContext | None,
        origin: str | None,
        headers: Sequence[tuple[str, str]],
        options: Options,
        unix_socket: str | None = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        reconnect: bool = False,
    ) -> None:
        flow.validate()
        self.on_event = on_event
        self.log = logger if logger is not None else _SOCKER_LOGGER
        target = ClientTarget.parse(url)
        secure = target.secure
        if ssl is not None and not secure:
            raise ValueError("ssl= needs a wss:// URL")
        if unix_socket is not None and secure:
            raise ValueError(
                "unix_socket= serves ws:// only (TLS over a unix socket is not offered)"
            )
        #: The unix-domain socket connected to instead of the URL's host:port.
        self.unix_socket = unix_socket
        self.url = url
        self.flow = flow
        self.host = target.host
        self.port = target.port
        self.path = target.path
        self.host_header = target.host_header
        self.ssl = (ssl or ssl_module.create_default_context()) if secure else None
        self.origin = origin
        self.headers = tuple(headers)
        self.options = options
        #: Reconnect and resume when the transport is lost (`socker.resume.v1`).
        self.reconnect = reconnect
        #: Transports opened after the first one (resume attempts that got a 101).
        self.reconnects = 0
        self._session: _SessionBase | None = None
        self._cm: AbstractAsyncContextManager[Client] | None = None
        self._wake: anyio.Event | None = None  # something changed (reconnect=True)
        self._final: anyio.Event | None = None  # the session really ended

    @property
    def conn(self) -> Connection:
        """The socker Connection (the same `conn` the handlers get)."""
        conn = self._live().conn
        assert conn is not None
        return conn

    @property
    def wire(self) -> Wire:
        """The connection's `Wire` (sans-I/O protocol state)."""
        return self._live().wire

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, or None."""
        return self._live().wire.subprotocol

    def send(self, data: bytes) -> None:
        """Send one binary message now, from outside the flow's handlers."""
        self._live().send(data)

    async def close(self, code: int = 1000, reason: str = "") -> CloseResult:
        """Close with `code` and wait for the connection to end."""
        session = self._live()
        session.close(code, reason)
        return await self.wait_closed()

    async def wait_closed(self) -> CloseResult:
        """Wait until the connection ends (flow complete, closed, or lost; with
        reconnect=True: until the session ends, across reconnects)."""
        session = self._live()
        if self._final is not None:
            await self._final.wait()
            return self._live().result
        assert session.done is not None
        await session.done.wait()
        return session.result

    async def __aenter__(self) -> Client:
        if self._cm is not None:
            raise RuntimeError("a Client can be entered only once")
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

    def _live(self) -> _SessionBase:
        if self._session is None:
            raise RuntimeError("the client is not connected: use `async with connect(...)`")
        return self._session

    async def _open_stream(self) -> anyio.abc.ByteStream:
        try:
            if self.unix_socket is not None:
                return await anyio.connect_unix(self.unix_socket)
            if self.ssl is None:
                return await anyio.connect_tcp(self.host, self.port)
            return await anyio.connect_tcp(
                self.host,
                self.port,
                ssl_context=self.ssl,
                tls_hostname=self.host,
                tls_standard_compatible=False,
            )
        except OSError as exc:
            # anyio reports "All connection attempts failed" with the real errors as
            # the cause; with one address, raise that one (ConnectionRefusedError...).
            if isinstance(exc.__cause__, OSError) and str(exc).startswith("All connection"):
                raise exc.__cause__ from None
            raise

    def _wire(self, started: float, resume_from: Wire | None = None) -> Wire:
        return Wire.client(
            self.flow,
            self.host_header,
            started,
            self.options,
            path=self.path,
            origin=self.origin,
            headers=self.headers,
            peer=(
                f"unix:{self.unix_socket}"
                if self.unix_socket is not None
                else f"{format_host(self.host)}:{self.port}"
            ),
            on_event=self.on_event,
            logger=self.log,
            reconnect=self.reconnect,
            resume_from=resume_from,
        )

    def _poke(self, session: Any = None) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _connect(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        if _on_asyncio():
            return await self._connect_asyncio(spawn, opened, done, resume_from)
        return await self._connect_stream(
            spawn, opened, done, self.options.open_timeout, resume_from
        )

    async def _follow(self, spawn: Spawn) -> None:
        """reconnect=True: whenever the current transport is lost and its session
        detached, reconnect (backoff with jitter: socker_core.reconnect_delay) and
        resume, until the session really ends."""
        assert self._final is not None
        try:
            while True:
                wake = self._wake = anyio.Event()
                session = self._live()
                wire = session.wire
                if wire.detached:
                    await self._reconnect(spawn, wire)
                    continue
                if session.done is not None and session.done.is_set() and not wire.handed_off:
                    return
                await wake.wait()
        finally:
            self._final.set()

    async def _reconnect(self, spawn: Spawn, holder: Wire) -> None:
        attempt = 0
        while holder.detached:
            await anyio.sleep(reconnect_delay(attempt, random.random()))
            attempt += 1
            if not holder.detached:
                return  # the window ended meanwhile
            opened, done = anyio.Event(), anyio.Event()
            try:
                session = await self._connect(spawn, opened, done, resume_from=holder)
            except (OSError, TimeoutError) as exc:
                self.log.info("client: reconnect attempt %d failed: %s", attempt, exc)
                continue
            await opened.wait()
            if session.wire.handshake_status == 101:
                self._session = session
                self.reconnects += 1
                return
            await done.wait()

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Client]:
        opened, done = anyio.Event(), anyio.Event()
        timeout = self.options.open_timeout
        body_error: BaseException | None = None
        connect_error: Exception | None = None
        async with anyio.create_task_group() as tg:
            session: _SessionBase | None = None
            try:
                if _on_asyncio():
                    session = await self._connect_asyncio(tg.start_soon, opened, done)
                else:
                    session = await self._connect_stream(tg.start_soon, opened, done, timeout)
                if self.reconnect:
                    self._final = anyio.Event()
                    tg.start_soon(self._follow, tg.start_soon)
            except Exception as exc:
                # Re-raised below, unwrapped (OSError, TimeoutError...).
                connect_error = exc
            if session is not None:
                self._session = session
                try:
                    await opened.wait()
                    if session.wire.handshake_status == 101:
                        try:
                            yield self
                        except BaseException as exc:
                            # Re-raised below, outside the task group (which would
                            # wrap it in an exception group).
                            body_error = exc
                        self._live().close(1000 if body_error is None else 1011, "")
                    # The connection ends within the wire's close_timeout.
                    await done.wait()
                    if self._final is not None:
                        await self._final.wait()
                finally:
                    session.abort()  # a no-op unless cancelled
                    if self._session is not None and self._session is not session:
                        self._session.abort()
        if connect_error is not None:
            raise connect_error
        if body_error is not None:
            raise body_error
        assert session is not None
        if session.wire.handshake_status != 101:
            raise HandshakeError(session.result)
        self._session = self._session or session

    async def _connect_asyncio(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        loop = asyncio.get_running_loop()
        wire = self._wire(loop.time(), resume_from)
        session = session_factory(loop)(
            loop,
            wire,
            asyncio_spawner(spawn),
            opened=opened,
            done=done,
            on_detached=self._poke,
            on_done=self._poke,
        )
        extra: dict[str, Any] = {}
        if self.ssl is not None:
            bound = self.options.close_timeout
            extra = {
                "ssl": self.ssl,
                "server_hostname": self.host,
                **ssl_timeouts(
                    self.options.open_timeout, _SHUTDOWN_FALLBACK if bound is None else bound
                ),
            }
        timeout = self.options.open_timeout
        with anyio.fail_after(math.inf if timeout is None else timeout):
            if self.unix_socket is not None:
                await loop.create_unix_connection(lambda: session, self.unix_socket)
            else:
                await loop.create_connection(lambda: session, self.host, self.port, **extra)
        return session

    async def _connect_stream(
        self,
        spawn: Spawn,
        opened: anyio.Event,
        done: anyio.Event,
        timeout: float | None,
        resume_from: Wire | None = None,
    ) -> _SessionBase:
        started = anyio.current_time()
        with anyio.fail_after(math.inf if timeout is None else timeout):
            stream = await self._open_stream()
        try:
            wire = self._wire(started, resume_from)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        wire.remote_address = socket_address(stream.extra(SocketAttribute.remote_address, None))
        raw_io = trio_raw_io()
        sock = None
        if raw_io is not None and isinstance(stream, anyio.abc.SocketStream):
            sock = stream.extra(SocketAttribute.raw_socket)
        session = _StreamSession(
            stream,
            wire,
            spawn,
            sock=sock,
            raw_io=raw_io,
            opened=opened,
            done=done,
            on_detached=self._poke,
            on_done=self._poke,
        )
        spawn(session.run)
        return session


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
) -> Client:
    """Connect to `url` (ws:// or wss://) and run `flow` on the connection.
    Use as `async with connect(...) as client:`. With `unix_socket=` the client
    connects to that unix-domain socket; the URL still gives the Host header and
    the path (`ws://localhost/game`).

    `reconnect=True`: on a lost transport, reconnect (exponential backoff with
    jitter, see `socker_core.reconnect_delay`) and resume the session at its step
    (the server's route must have `resume_window`); `wait_closed()` returns when
    the session really ends, with its code (4410 and friends when a resume was
    refused: start a fresh connection then)."""
    return Client(
        url,
        flow,
        ssl=ssl,
        origin=origin,
        headers=headers,
        options=Options(**options),
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        reconnect=reconnect,
    )


async def run_client(
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
) -> CloseResult:
    """Connect, run `flow` to its end, and return how the connection ended.

    A rejected handshake is a result (`handshake_status` is the HTTP status), not an
    error; an unreachable server raises `OSError`. `reconnect`: see `connect`.
    """
    client = connect(
        url,
        flow,
        ssl=ssl,
        origin=origin,
        headers=headers,
        unix_socket=unix_socket,
        on_event=on_event,
        logger=logger,
        reconnect=reconnect,
        **options,
    )
    try:
        async with client:
            return await client.wait_closed()
    except HandshakeError as exc:
        return exc.result
