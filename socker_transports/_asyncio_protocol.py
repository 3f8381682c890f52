"""The asyncio (and uvloop) fast path of `socker_transports.anyio`.

A connection is an `asyncio.Protocol` around one `Wire`, with no task of its own:

- `data_received` feeds the wire and writes its output at once: big payloads
  from their own buffers (`Wire.chunks_to_send`: `writelines` where it does not
  join, else one `write` each), never joined with their header (a copy, and a
  fresh allocation past glibc's mmap threshold: page faults on every message);
  on asyncio's own loops and on uvloop the connection is a `BufferedProtocol`
  reading into one 256 KiB buffer shared by every connection on the thread,
  handed to the wire as a view (no copy of its own): a payload crosses two
  copies, kernel to that buffer, buffer to its message (asyncio's plain reads
  allocate 256 KiB each, past glibc's mmap threshold, an mmap/mremap/munmap per
  read however little arrives; uvloop's copy its buffer into a new bytes);
- one `loop.call_at` timer, armed at `wire.next_deadline` or earlier (it is moved
  only to an earlier deadline; firing early just re-arms it);
- fairness: the wire handles at most `Options.frames_per_turn` frames per call;
  while it holds more (`wire.input_pending`) reading is paused and the rest is
  handled one turn at a time from `call_soon` callbacks, so other connections'
  callbacks run between turns;
- reading is paused while `wire.wants_data` is False (backpressure) and resumed
  when it flips back; while the transport's write buffer is above `write_limit`
  (`pause_writing`) the wire keeps its output, so its own limits apply;
- application sends and finished handlers from other tasks flush right away;
  a `wakeup` (events the flow made outside a wire call) is collected in a
  `call_soon` callback, once per burst;
- awaited handlers, hooks and on_close hooks run as tasks in the owner's anyio
  task group (see `_anyio_session_base._SessionBase`);
- closing: when the wire asks to linger (`wire.linger`), `write_eof()` (a FIN
  after the last bytes) and read and discard until the peer's EOF, bounded in
  time and bytes, so that what was written is read rather than destroyed by the
  reset that closing with unread input sends; then `transport.close()` (which
  flushes) with a timer that aborts the transport if it is still open after
  `close_timeout`.

Time is `loop.time()` (what `anyio.current_time()` returns on asyncio), read once
per callback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, cast

import anyio

from socker_core import RoomRef

from ._anyio_raw_io import shared_read_buffer
from ._anyio_session_base import Spawn, _SessionBase
from .wire import SEND_BUFFER_OVERFLOW, Wire, format_host, socket_address

logger = logging.getLogger("socker")

#: asyncio's default high-water mark for a transport's write buffer.
_DEFAULT_HIGH_WATER = 64 * 1024


def peer_name(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{format_host(str(address[0]))}:{address[1]}"
    return "?" if address is None else str(address)


def ssl_timeouts(handshake: float | None, shutdown: float) -> dict[str, float]:
    """`create_server` / `create_connection` keyword arguments bounding TLS."""
    options = {"ssl_handshake_timeout": 1e9 if handshake is None else handshake}
    if sys.version_info >= (3, 11):
        options["ssl_shutdown_timeout"] = shutdown
    return options


def asyncio_spawner(start_soon: Spawn) -> Spawn:
    """`start_soon` callable from protocol callbacks. anyio finds its backend with
    sniffio, which sees no asyncio task in a callback: outside `anyio.run` (a plain
    `asyncio.run`, say) it would fail, so say it explicitly for the call."""
    try:
        from sniffio import current_async_library_cvar
    except ImportError:  # pragma: no cover - anyio then assumes asyncio
        return start_soon

    def spawn(func: Callable[..., Any], *args: Any) -> None:
        token = current_async_library_cvar.set("asyncio")
        try:
            start_soon(func, *args)
        finally:
            current_async_library_cvar.reset(token)

    return spawn


#: Where writes are not vectored (asyncio 3.11), pending chunks up to this many
#: bytes in all are joined into one write: a copy of a 64 KiB payload costs less
#: than a second `send` and the TCP segment it makes (a header alone); past it
#: each buffer is written on its own (a 1 MiB copy costs more than the segment).
_JOIN_FOR_ONE_WRITE = 256 * 1024


def _writes_vectored(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's `transport.writelines` writes its buffers without joining
    them (uvloop: `writev`; asyncio from 3.12: `sendmsg`); asyncio 3.11's joins,
    a copy of every big payload, so there each buffer is written on its own."""
    return not type(loop).__module__.startswith("asyncio") or sys.version_info >= (3, 12)


class _ProtocolSession(_SessionBase, asyncio.Protocol):
    __slots__ = (
        "_armed",
        "_closing",
        "_collect_soon",
        "_keeping",
        "_linger_left",
        "_linger_timer",
        "_on_made",
        "_paused",
        "_timer",
        "_turn_soon",
        "_vectored",
        "_write_paused",
        "loop",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wire: Wire,
        spawn: Spawn,
        *,
        on_made: Callable[[Any], None] | None = None,
        on_open: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        opened: anyio.Event | None = None,
        done: anyio.Event | None = None,
        on_detached: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(
            wire,
            spawn,
            on_open=on_open,
            on_done=on_done,
            opened=opened,
            done=done,
            on_detached=on_detached,
        )
        self.loop = loop
        self._vectored = _writes_vectored(loop)
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None  # the deadline _timer is armed for
        self._linger_timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading paused
        self._write_paused = False
        self._closing = False  # transport.close() called
        self._collect_soon = False
        self._keeping = False  # transport gone; the wire keeps a detached session
        self._turn_soon = False  # a _next_turn callback is scheduled
        self._linger_left = -1  # bytes still discarded while lingering (-1: not lingering)

    def _flush(self, transport: asyncio.Transport) -> None:
        """Write what the wire has: a big payload from its own buffer (no join)
        where writes are vectored; else small and mid-size chunks joined (above)."""
        chunks = self.wire.chunks_to_send()
        if not chunks:
            return
        if len(chunks) == 1:
            transport.write(chunks[0])
        elif self._vectored:
            transport.writelines(chunks)
        elif sum(map(len, chunks)) <= _JOIN_FOR_ONE_WRITE:
            transport.write(b"".join(chunks))
        else:
            for chunk in chunks:
                transport.write(chunk)

    # -- the session API -------------------------------------------------------

    def _now(self) -> float:
        return self.loop.time()

    def _wakeup(self) -> None:
        if not self._collect_soon:
            self._collect_soon = True
            self.loop.call_soon(self._collect)

    def _collect(self) -> None:
        self._collect_soon = False
        if self._ended:
            return
        now = self.loop.time()
        self.wire.collect(now)
        self._after(now)

    def push_frame(
        self, frame: bytes, data: bytes, now: float, origin: RoomRef | None = None
    ) -> bool:
        # Written at once (`transport.write` sends right away when its buffer is
        # empty): the first recipient has it before the last one is queued.
        if self._ended:
            return False
        wire = self.wire
        if not wire.send_frame(frame, data, now, origin):
            if wire.should_close_transport:
                self._after(now)  # dropped (max_send_buffer): close it
            return False
        transport = self.transport
        if self._write_paused or self._closing or transport is None:
            self._after(now)  # the wire keeps it; its own limits apply
        else:
            self._flush(transport)
        return True

    def abort(self) -> None:
        if self._ended:
            return
        if self._keeping:  # a shutdown giving up: the detached session ends
            now = self.loop.time()
            self.wire.abort(now, "connection aborted", keep_session=False)
            self._after(now)
            return
        if self.transport is not None:
            self.transport.abort()  # its connection_lost comes later: ignored
        self._lost("connection aborted", keep_session=False)

    def _after(self, now: float) -> None:
        """Act on what the last wire call produced: run events, write, close,
        re-arm the timer and pause or resume reading."""
        wire = self.wire
        self._dispatch()
        if self._keeping:
            self._keep_detached()
            return
        transport = self.transport
        if self._closing or transport is None:
            return
        if wire.should_close_transport:
            self._flush(transport)
            self._close_transport(transport)
            return
        if not self._write_paused and not wire.input_pending:
            # While input is pending the output waits for the last turn (or for
            # write_limit, which ends input_pending): one write per read, not per turn.
            self._flush(transport)
        if wire.input_pending and not self._turn_soon:
            # The wire stopped at its per-turn budget: the rest waits for the next
            # loop iteration, after every other ready callback.
            self._turn_soon = True
            self.loop.call_soon(self._next_turn)
        deadline = wire.next_deadline
        if deadline is not None and (self._armed is None or deadline < self._armed):
            # Re-armed only for an earlier deadline: a later one (the handshake
            # deadline giving way to keepalive, say) waits for the timer to fire.
            self._arm(deadline)
        wants = wire.wants_data
        if wants is self._paused:
            self._paused = not wants
            if wants:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _next_turn(self) -> None:
        self._turn_soon = False
        if self._ended or self._closing:
            return
        now = self.loop.time()
        try:
            self.wire.receive_pending(now)
            self._after(now)
        except Exception:
            self._driver_error()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        armed = self._armed
        self._armed = None
        if self._ended:
            return
        now = self.loop.time()
        if armed is not None and now < armed:
            now = armed  # the loop may run a timer a clock tick early
        wire = self.wire
        wire.tick(now)
        if armed is not None and wire.next_deadline == armed and not wire.should_close_transport:
            # A deadline that tick() did not consume would spin: back off.
            wire.log.warning("%s: deadline %s not consumed by tick", wire.peer, armed)
            self._armed = armed
            self._timer = self.loop.call_at(now + 0.01, self._on_timer)
        self._after(now)

    def _close_transport(self, transport: asyncio.Transport) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.wire.close_code == SEND_BUFFER_OVERFLOW:
            transport.abort()  # the peer reads nothing: flushing to it is pointless
            return
        linger = self.wire.linger
        if linger is not None and transport.can_write_eof():
            # Half-close, then drain what the peer still sends (data_received /
            # eof_received), so our last bytes reach it instead of a reset.
            seconds, self._linger_left = linger
            transport.write_eof()
            if self._paused:
                self._paused = False
                transport.resume_reading()
            self._linger_timer = self.loop.call_later(seconds, self._end_linger)
            return
        self._really_close(transport)

    def _really_close(self, transport: asyncio.Transport) -> None:
        self._linger_left = -1
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if transport.get_write_buffer_size() or transport.get_extra_info("sslcontext"):
            # close() waits for the buffer to drain (and TLS for its shutdown):
            # bounded, like every other wait.
            self._linger_timer = self.loop.call_later(self._linger, transport.abort)
        transport.close()

    def _end_linger(self) -> None:
        self._linger_timer = None
        if self.transport is not None and not self._ended:
            self._really_close(self.transport)

    def _lost(self, reason: str, *, keep_session: bool = True) -> None:
        """The transport is gone: end the wire, cancel what waits, report (or keep
        a detached session ticking until it resumes elsewhere or ends)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._armed = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        wire = self.wire
        if not wire.should_close_transport:
            wire.abort(self.loop.time(), reason, keep_session=keep_session)
        self.transport = None
        if wire.detached:
            self._keeping = True
            self._after(self.loop.time())
            return
        self._ended = True
        self._dispatch()  # on_close hooks start here
        wire.data_to_send()  # nothing more can be written
        self._cancel_pending()
        self._maybe_done()

    def _keep_detached(self) -> None:
        """No transport: arm the timer for the detached session, or finish."""
        wire = self.wire
        wire.data_to_send()  # nothing can be written
        if wire.finished:
            self._keeping = False
            self._ended = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._cancel_pending()
            self._maybe_done()
            return
        deadline = wire.next_deadline
        if deadline is not None and deadline != self._armed:
            self._arm(deadline)

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.wire.remote_address is None:
            self.wire.remote_address = socket_address(transport.get_extra_info("peername"))
        if self._on_made is not None:
            self._on_made(self)
        limit = self.wire.options.write_limit
        if limit != _DEFAULT_HIGH_WATER:
            transport.set_write_buffer_limits(high=limit)
        try:
            self._after(self.loop.time())
        except Exception:
            self._driver_error()

    def data_received(self, data: bytes | memoryview) -> None:
        if self._linger_left >= 0:
            self._linger_left -= len(data)  # discarded: the connection is over
            if self._linger_left < 0 and self.transport is not None:
                self._really_close(self.transport)
            return
        now = self.loop.time()
        try:
            self.wire.receive_data(data, now)
            self._after(now)
        except Exception:
            self._driver_error()

    def eof_received(self) -> bool:
        if self._linger_left >= 0:
            if self.transport is not None:
                self._really_close(self.transport)
            return True  # closed by us, above
        now = self.loop.time()
        try:
            self.wire.receive_data(None, now)
            self._after(now)
        except Exception:
            self._driver_error()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended and not self._keeping:
            self._lost("connection lost" if exc is None else f"connection lost: {exc!r}")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._ended:
            self._after(self.loop.time())


class _BufferedSession(_ProtocolSession, asyncio.BufferedProtocol):
    """`_ProtocolSession` reading into one BIG_READ_SIZE buffer shared by every
    connection on the thread: the transport calls `get_buffer` then
    `buffer_updated` in one callback, and the wire copies out what it keeps (an
    incomplete header; payloads straight into their messages) before returning."""

    __slots__ = ("_buffer",)

    def __init__(self, buffer: memoryview, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A view, not a copy: the wire copies what it keeps before the next read.
        self.data_received(self._buffer[:nbytes])


def session_factory(loop: asyncio.AbstractEventLoop) -> Callable[..., _ProtocolSession]:
    """Makes the loop's kind of session: buffered on asyncio's own loops and on
    uvloop (whose plain reads copy its own buffer into a new bytes object each
    time: one copy more than the buffered read), plain on others."""
    if type(loop).__module__.startswith(("asyncio", "uvloop")):
        buffer = shared_read_buffer()

        def buffered(*args: Any, **kwargs: Any) -> _ProtocolSession:
            return _BufferedSession(buffer, *args, **kwargs)

        return buffered
    return _ProtocolSession
