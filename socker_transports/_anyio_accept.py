"""How the anyio Server listens and accepts: on asyncio (and uvloop) the loop
accepts into Protocol sessions (`_asyncio_protocol`); on trio, accept loops start
one `_StreamSession` task per connection (bare sockets without TLS, streams with it)."""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import anyio
import anyio.abc
import anyio.streams.stapled
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from ._anyio_raw_io import STREAM_ERRORS, trio_raw_io
from ._anyio_server_base import _ServerBase
from ._anyio_session import _StreamSession
from ._asyncio_protocol import asyncio_spawner, peer_name, session_factory, ssl_timeouts
from ._listen import is_tcp
from .wire import (
    Wire,
    format_host,
    socket_address,
)

#: Listen backlog (anyio's default); asyncio's create_server would set 100.
_BACKLOG = 65536

#: Connections accepted per wakeup of a trio accept loop.
_ACCEPT_BATCH = 64


class _ServerAccept(_ServerBase):
    """The Server's listening and accept paths, one per backend."""

    async def _main_asyncio(
        self,
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """asyncio: the loop accepts into `_ServerProtocol`s; this task owns the
        task group their handlers run in, and shuts them down."""
        self._loop = loop = asyncio.get_running_loop()
        self._session_factory = session_factory(loop)
        servers: list[asyncio.AbstractServer] = []
        extra: dict[str, Any] = {}
        if self.ssl is not None:
            extra = {"ssl": self.ssl, **ssl_timeouts(self.options.open_timeout, self._linger())}
        try:
            async with anyio.create_task_group() as conns:
                self._spawn = asyncio_spawner(conns.start_soon)
                for sub in listener.listeners:
                    raw = sub.extra(SocketAttribute.raw_socket)
                    if is_tcp(raw):
                        server = await loop.create_server(
                            self._new_protocol, sock=raw, backlog=_BACKLOG, **extra
                        )
                    else:
                        server = await loop.create_unix_server(
                            self._new_protocol, sock=raw, backlog=_BACKLOG, **extra
                        )
                    servers.append(server)
                with anyio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._closing:
                        accepting.cancel()
                    task_status.started()
                    await anyio.sleep_forever()
                for listening in servers:
                    listening.close()
                await self._close_all(conns)
        finally:
            for listening in servers:
                listening.close()
            self._spawn = None
            self._stopped_event().set()

    def _new_protocol(self) -> asyncio.BaseProtocol:
        loop = self._loop
        assert loop is not None and self._spawn is not None
        wire = Wire.server(
            self.routes,
            loop.time(),
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        return self._session_factory(
            loop,
            wire,
            self._spawn,
            on_made=self._made,
            on_open=self._opened,
            on_done=self._done,
        )

    def _made(self, session: Any) -> None:
        assert session.transport is not None
        session.wire.peer = peer_name(session.transport)
        self._admit(session, session.loop.time())

    async def _main_streams(
        self,
        listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """trio (any backend but asyncio): accept loops, one task per connection."""
        self._raw_io = trio_raw_io()
        try:
            async with anyio.create_task_group() as conns:
                self._spawn = conns.start_soon
                with anyio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._closing:
                        accepting.cancel()
                    task_status.started()
                    async with anyio.create_task_group() as accept:
                        for sub in listener.listeners:
                            assert isinstance(sub, anyio.abc.SocketListener)
                            if self._raw_io is not None and self.ssl is None:
                                raw = sub.extra(SocketAttribute.raw_socket)
                                accept.start_soon(self._raw_accept_loop, raw, conns)
                            else:
                                accept.start_soon(self._accept_loop, sub, conns)
                # Stop accepting, then close every connection with 1001.
                await anyio.aclose_forcefully(listener)
                await self._close_all(conns)
        finally:
            self._spawn = None
            self._stopped_event().set()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, conns: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and friends: keep the server up
                self.log.error("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            conns.start_soon(self._connection, stream)

    async def _raw_accept_loop(self, listening: socket.socket, conns: anyio.abc.TaskGroup) -> None:
        """trio without TLS: accept bare sockets (no stream objects: the session
        reads and writes the socket itself)."""
        raw_io = self._raw_io
        assert raw_io is not None
        while True:
            await raw_io.wait_readable(listening)  # the checkpoint between batches
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, address = listening.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EMFILE and friends: keep the server up
                    self.log.error("accept failed: %s", exc)
                    await anyio.sleep(0.1)
                    break
                try:
                    sock.setblocking(False)
                    if is_tcp(sock):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    sock.close()
                    continue
                conns.start_soon(self._raw_connection, sock, address)

    async def _raw_connection(self, sock: socket.socket, address: Any) -> None:
        raw_io = self._raw_io
        assert raw_io is not None and self._spawn is not None
        peer = f"{format_host(address[0])}:{address[1]}" if isinstance(address, tuple) else "?"
        wire = Wire.server(
            self.routes,
            raw_io.current_time(),
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            peer=peer,
            remote_address=socket_address(address),
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        session = _StreamSession(
            None,
            wire,
            self._spawn,
            sock=sock,
            raw_io=raw_io,
            on_open=self._opened,
            on_done=self._done,
        )
        self._admit(session, session._now())
        await session.run()

    async def _connection(self, raw: anyio.abc.SocketStream) -> None:
        raw_io = self._raw_io
        started = anyio.current_time() if raw_io is None else raw_io.current_time()
        sock = raw.extra(SocketAttribute.raw_socket)
        try:
            address = sock.getpeername()
        except OSError:
            address = "?"
        peer = f"{format_host(address[0])}:{address[1]}" if isinstance(address, tuple) else address
        stream: anyio.abc.ByteStream = raw
        try:
            if self.ssl is not None:
                timeout = self.options.open_timeout
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    stream = await TLSStream.wrap(
                        raw, server_side=True, ssl_context=self.ssl, standard_compatible=False
                    )
                if stream is raw:
                    self.log.info("server %s: TLS handshake timed out", peer)
                    await anyio.aclose_forcefully(raw)
                    return
        except (*STREAM_ERRORS, anyio.EndOfStream) as exc:
            self.log.info("server %s: TLS handshake failed: %s", peer, exc)
            await anyio.aclose_forcefully(raw)
            return
        wire = Wire.server(
            self.routes,
            started,
            self.options,
            handshake_hook=self.handshake_hook,
            http_handler=self.http_handler,
            on_event=self.on_event,
            logger=self.log,
            peer=peer,
            remote_address=socket_address(address),
            registry=self.registry,
            owner=self,
            sessions=self.session_store,
            keeper=self._keeper,
        )
        assert self._spawn is not None
        session = _StreamSession(
            stream,
            wire,
            self._spawn,
            sock=sock if stream is raw else None,
            raw_io=raw_io,
            on_open=self._opened,
            on_done=self._done,
        )
        self._admit(session, session._now())
        await session.run()
