"""Resumable sessions kept in the engine, so a client resumes on any worker (anyio).

A server with an engine and a resumable route owns one `EngineSessions`: the wire's
`SessionKeeper` (wire/kept_phase.py). It moves snapshots between the wires of this
worker and the engine; what to store, when a frame may be written, what to replay
and which code refuses a resume are the core's decisions (`socker_core._ledger`,
`_snapshot`, `_handover`).

- Storing: a fresh session's first snapshot is put before any of its messages is
  written; afterwards a snapshot is stored (one at a time per session, coalesced)
  whenever the write-ahead rule holds a message back, after the turns that follow
  a received message, and every `window / 3` seconds (the engine keeps it `window`
  seconds, the flow's `resume_window`). An update uses `replace_session`: when it
  finds the key gone, another worker resumed the session, and this copy ends here
  without its on_close (4409).
- Detaching: the final snapshot is stored and this worker forgets its copy (no
  on_close): the engine holds the session, and any worker, this one included,
  resumes it from there. When the window ends, this worker takes the session back
  if nobody resumed it and ends it: its on_close runs once.
- Resuming a token this worker does not hold: take it from the engine (atomic: one
  taker wins, tokens are single-use across workers), join its rooms on the engine
  (subscribing this worker), fetch each room's history since the member's position,
  catch up with what this worker delivered meanwhile, plan the replay, restore the
  Stepper, store its snapshot under the new token, then answer the client.

Times cross processes as wall-clock seconds (the step's and the window's time left
shrink by the time the session spent in the store); everything else is the core's
monotonic `now`.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

from socker_core import (
    Await,
    CloseCode,
    Closed,
    Flow,
    LocalProtocolError,
    ResumeFailure,
    ResumePlan,
    ResumeSession,
    RoomHistory,
    SessionSnapshot,
    SnapshotError,
    Stepper,
    check_restorable,
    history_needed,
    plan_resume,
)
from socker_core._stepper import stepper_of

from ..wire.resume import new_token
from .cluster import decode_publication
from .errors import EngineError
from .events import Recovered, StreamPosition
from .interface import Engine

if TYPE_CHECKING:
    from ..wire import Wire

logger = logging.getLogger("socker.engine")

#: What the engine stores: the wall-clock time of the snapshot, then its bytes.
_WALL = struct.Struct("!dd")  # when stored, and since when detached (0: connected)
#: The store keeps a snapshot this long past the window: the worker that detached a
#: session takes it back when the window ends (to run its on_close), so the key must
#: still be there then; a resume after the window is refused (4410) and ends it.
TTL_MARGIN = 10.0


def _pointer_key(token: str) -> str:
    """Where a resume leaves, until the client used its new token, a pointer from
    the token it presented to the new one (a drop during the resume handshake must
    not strand the session; whoever takes the new token's key wins, so the session
    still has one owner). A key of its own, never the old token's: a worker still
    updating the session under the old token (its detach, its refresh) must find
    that key gone, not a pointer to overwrite (`replace_session` would take it for
    the session, and the window's end would then run on_close on a resumed one).
    Tokens are base64url: the dot cannot occur in one."""
    return token + ".next"


#: Store retries while the engine is unreachable (seconds, doubling).
_RETRY = (0.05, 1.0)
#: Catch-up fetches at most, for what this worker delivered while it fetched.
_CATCH_UP = 8
#: The close code of a resume the store cannot answer now (RFC 6455's "try again later").
TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER


def keeps_sessions(engine: Engine, routes: Flow | Mapping[str, Flow]) -> bool:
    """Whether a server on `engine` keeps its resumable sessions there: when some
    route's flow may resume and the engine is shared between processes (not the
    in-process `LocalEngine`: one process keeps its sessions in its own store, as
    without an engine)."""
    from .local import LocalEngine

    if isinstance(engine, LocalEngine):
        return False
    flows = [routes] if isinstance(routes, Flow) else list(routes.values())
    return any(flow.resume_window is not None for flow in flows)


def _pack(snapshot: SessionSnapshot, detached: float = 0.0) -> bytes:
    return _WALL.pack(time.time(), detached) + snapshot.to_bytes()


def _unpack(blob: bytes) -> tuple[float, float, SessionSnapshot]:
    """(stored at, detached since or 0, the snapshot), wall-clock seconds."""
    if len(blob) < _WALL.size:
        raise SnapshotError("too short for a stored session")
    wall, detached = _WALL.unpack_from(blob)
    return wall, detached, SessionSnapshot.from_bytes(blob[_WALL.size :])


class _Kept:
    """One session this worker runs, as the keeper follows it."""

    __slots__ = ("again", "busy", "detached", "gone", "previous", "session", "stored", "wire")

    def __init__(self, wire: Wire, session: ResumeSession) -> None:
        self.wire = wire
        self.session = session
        self.busy = False  # a store is in flight
        self.again = False  # something changed meanwhile: store once more
        self.stored = False  # the engine has held it (updates use replace_session)
        self.gone = False  # ended, forgotten, or taken elsewhere: store nothing more
        self.previous: str | None = None  # the token the resume presented (a pointer)
        self.detached = 0.0  # wall-clock time the transport was lost (0: connected)


class EngineSessions:
    """The keeper of one anyio server's resumable sessions in `engine` (see the
    module docstring). `server` gives the registry, the clock (`_now`), the worker's
    position in each room (`room_position`) and `run_blocking`."""

    def __init__(
        self,
        server: Any,
        engine: Engine,
        *,
        log: logging.Logger | None = None,
        portal: BlockingPortal | None = None,
    ) -> None:
        self.server = server
        self.engine = engine
        self.log = log if log is not None else logger
        #: The threaded driver's: the engine's own loop (BlockingEngine), where this
        #: keeper's tasks run; wires are then called from connection threads.
        self.portal = portal
        self._kept: dict[ResumeSession, _Kept] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop_thread: int | None = None  # the thread the keeper's tasks run on

    # -- running -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The keeper's tasks (its stores, lookups and expiry watches), until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._loop_thread = threading.get_ident()
            tg.start_soon(self._refresh)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def stop(self) -> None:
        """End the keeper's tasks (the threaded driver's, on the portal's loop)."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        if self.portal is not None and threading.get_ident() != self._loop_thread:
            # From a connection thread: scheduled on the engine's loop, never waited for.
            self.portal.start_task_soon(self._guarded, func, *args)
            return
        tg = self._tg
        if tg is None:
            self.log.warning("session keeper not running: a session is not stored")
            return
        tg.start_soon(self._guarded, func, *args)

    async def _guarded(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """One of the keeper's tasks: an error is logged, never raised into the
        server's task group (which would stop the server)."""
        try:
            await func(*args)
        except Exception:
            self.log.exception("session keeper: %s failed", getattr(func, "__name__", func))

    async def _refresh(self) -> None:
        """Keep every live session's snapshot in the engine (its ttl is the window)."""
        while True:
            windows = [k.session.window for k in self._kept.values()] or [30.0]
            await anyio.sleep(max(0.5, min(windows) / 3))
            for kept in list(self._kept.values()):
                self._store(kept)

    # -- what wires tell us (kept_phase.SessionKeeper) ----------------------------------

    def opened(self, wire: Wire, session: ResumeSession, now: float) -> None:
        kept = self._kept[session] = _Kept(wire, session)
        self._store(kept)

    def touched(self, wire: Wire) -> None:
        session = wire.kept_session
        kept = None if session is None else self._kept.get(session)
        if kept is not None:
            self._store(kept)

    def detached(self, wire: Wire, session: ResumeSession, now: float) -> None:
        kept = self._kept.get(session)
        if kept is not None and not kept.gone:
            kept.detached = time.time()
            self._spawn(self._detach, kept)

    def ended(self, wire: Wire, session: ResumeSession, code: int) -> None:
        kept = self._kept.pop(session, None)
        if kept is None or kept.gone:
            return
        kept.gone = True
        if code != CloseCode.SESSION_TAKEN_OVER:
            self._spawn(self._drop, session.token)
            if kept.previous is not None:
                self._spawn(self._drop, _pointer_key(kept.previous))

    def lookup(
        self, wire: Wire, flow: Flow, token: str, received: int, request: Any, now: float
    ) -> None:
        self._spawn(self._resume, wire, flow, token, received, request)

    def confirmed(self, wire: Wire, session: ResumeSession) -> None:
        """The client used the transport it resumed on: it has the new token, so the
        one it presented is spent for good."""
        kept = self._kept.get(session)
        if kept is not None and kept.previous is not None:
            previous, kept.previous = kept.previous, None
            self._spawn(self._drop, _pointer_key(previous))

    # -- storing -------------------------------------------------------------------

    def _store(self, kept: _Kept) -> None:
        if kept.gone:
            return
        if kept.busy:
            kept.again = True
            return
        kept.busy = True
        self._spawn(self._store_loop, kept)

    async def _store_loop(self, kept: _Kept) -> None:
        try:
            while not kept.gone:
                kept.again = False
                if not await self._store_once(kept):
                    return
                if not kept.again:
                    return
        finally:
            kept.busy = False

    def _snapshot(self, kept: _Kept) -> SessionSnapshot | None:
        """The session's snapshot now; None (and the session closed with 1011) when
        its conn.state cannot be encoded: the application must fix its state_codec."""
        stepper = kept.session.stepper
        if stepper.is_closed:
            return None
        registry = stepper.registry
        conn = stepper.conn
        info = {}
        if registry is not None:
            for room in registry.rooms_of(conn):
                info[room] = registry.info(conn, room) or {}
        try:
            snapshot = stepper.snapshot(
                self.server._now(), route=kept.session.route, room_info=info
            )
        except LocalProtocolError as exc:
            if stepper.is_closed or "overflowed" in str(exc):
                return None
            self.log.error("%s: cannot store the session: %s", stepper.id, exc)
            kept.gone = True
            kept.wire.close(
                CloseCode.INTERNAL_ERROR, "session cannot be stored", self.server._now()
            )
            self._wake(kept.wire)
            return None
        return snapshot

    async def _store_once(self, kept: _Kept) -> bool:
        """Store one snapshot; False when the session cannot be stored any more."""
        async with self._hold(kept.wire):
            snapshot = self._snapshot(kept)
        if snapshot is not None and any(r not in snapshot.positions for r in snapshot.rooms):
            # A room whose join has not reached the engine yet: once it has, the
            # member's place in that stream is known (the server's _joined).
            with contextlib.suppress(EngineError):
                await self.server.rooms_settled()
            async with self._hold(kept.wire):
                snapshot = self._snapshot(kept)
        if snapshot is None:
            return False
        session = kept.session
        blob = _pack(snapshot, kept.detached)
        ttl = session.window + TTL_MARGIN
        delay = _RETRY[0]
        while True:
            try:
                if kept.stored:
                    stored = await self.engine.replace_session(session.token, blob, ttl)
                else:
                    await self.engine.put_session(session.token, blob, ttl)
                    stored = True
                break
            except EngineError as exc:
                if kept.gone:
                    return False
                self.log.warning("%s: session not stored, retrying: %s", snapshot.conn_id, exc)
                await anyio.sleep(delay)
                delay = min(_RETRY[1], delay * 2)
        if kept.gone:
            return False
        async with self._hold(kept.wire):
            if not stored:
                self._taken_elsewhere(kept)
                return False
            kept.stored = True
            kept.wire.persisted(snapshot, self.server._now())
        self._wake(kept.wire)
        return True

    def _taken_elsewhere(self, kept: _Kept) -> None:
        """Another worker resumed this session: end this copy without its on_close."""
        kept.gone = True
        self._kept.pop(kept.session, None)
        stepper = kept.session.stepper
        now = self.server._now()
        self.log.info("%s: resumed on another worker; this copy ends", stepper.id)
        if not stepper.is_detached and not stepper.is_closed:
            kept.wire.abort(now, "session resumed on another worker")
        if stepper.is_detached:
            stepper.post(stepper.forget(now))
        self._wake(kept.wire)

    async def _drop(self, token: str) -> None:
        try:
            await self.engine.drop_session(token)
        except EngineError as exc:  # it expires with its ttl
            self.log.warning("an ended session was not dropped from the engine: %s", exc)

    @asynccontextmanager
    async def _hold(self, *wires: Wire | None) -> AsyncIterator[None]:
        """Hold the locks of these wires (a threaded driver's connection locks; none
        on anyio, where this never awaits). Taken without blocking the engine's loop:
        a connection thread may wait for that loop while it holds its lock."""
        guards = [w.stepper_guard for w in wires if w is not None and w.stepper_guard]
        while True:
            taken = []
            for guard in guards:
                if not guard.acquire(False):
                    break
                taken.append(guard)
            if len(taken) == len(guards):
                break
            for guard in reversed(taken):
                guard.release()
            await anyio.sleep(0.001)
        try:
            yield
        finally:
            for guard in reversed(guards):
                guard.release()

    @staticmethod
    def _wake(wire: Wire) -> None:
        wakeup = wire.wakeup
        if wakeup is not None:
            wakeup()

    # -- detaching -----------------------------------------------------------------------

    async def _detach(self, kept: _Kept) -> None:
        """Store the detached session, then forget this copy: the engine holds it."""
        while kept.busy and not kept.gone:
            await anyio.sleep(0.005)  # the store in flight lands first
        if kept.gone:
            return
        kept.busy = True
        try:
            for _ in range(_CATCH_UP):
                if not await self._store_once(kept) or kept.gone:
                    return
                replay = kept.session.stepper.replay
                if replay is None or not replay.needs_persist:
                    break
        finally:
            kept.busy = False
        stepper = kept.session.stepper
        async with self._hold(kept.wire):
            if kept.gone or not stepper.is_detached:
                return  # ended, or resumed meanwhile
            kept.gone = True
            self._kept.pop(kept.session, None)
            token, window = kept.session.token, kept.session.window
            stepper.post(stepper.forget(self.server._now()))
        self._wake(kept.wire)
        self._spawn(self._expire, token, kept.detached + window, kept.session.stepper.flow)

    async def _expire(self, token: str, ends: float, flow: Flow) -> None:
        """When the window ends (`ends`, wall clock): if nobody resumed the session,
        end it here (its on_close runs)."""
        await anyio.sleep(max(0.0, ends - time.time()))
        try:
            blob = await self.engine.take_session(token)
        except EngineError as exc:
            self.log.warning("a session's window ended but the engine is unreachable: %s", exc)
            return
        if blob is not None:
            await self._end_expired(blob, flow)

    async def _end_expired(self, blob: bytes, flow: Flow) -> None:
        """End a stored session whose window is over, here: its on_close runs."""
        now = self.server._now()
        try:
            wall, _, snapshot = _unpack(blob)
            plan = ResumePlan(snapshot.sent, (), {})
            # Its clocks as they were when it was stored: the step's timer and the
            # window ran on since; `tick` ends it as the first of them to run out
            # would have (4408, or 1006 "resume window expired").
            since = max(0.0, time.time() - wall)
            stepper = Stepper.restore(flow, snapshot, now - since, plan=plan)
        except (SnapshotError, LocalProtocolError) as exc:
            self.log.warning("an expired session could not be ended cleanly: %s", exc)
            return
        events = stepper.tick(max(now, stepper.next_deadline or now))
        for event in events:
            if isinstance(event, Await):
                try:
                    await event.awaitable
                except Exception:
                    self.log.exception("%s: on_close raised", stepper.id)
            elif isinstance(event, Closed):
                self.log.info("%s: resume window expired", stepper.id)

    # -- resuming ------------------------------------------------------------------------

    async def _fetch(self, room: str, epoch: str, after: int, member: str) -> RoomHistory:
        result = await self.engine.fetch_since(room, StreamPosition(after, epoch))
        if not isinstance(result, Recovered):
            return RoomHistory(room, epoch, after, (), result.reason)
        messages: list[tuple[int, bytes | None]] = []
        for publication in result.publications:
            if publication.epoch != epoch:
                return RoomHistory(room, epoch, after, (), "epoch-changed")
            try:
                skip, payload = decode_publication(publication.data)
            except ValueError:
                skip, payload = frozenset({member}), b""  # not socker's: not for members
            messages.append((publication.offset, None if member in skip else payload))
        if result.position.epoch != epoch:
            return RoomHistory(room, epoch, after, (), "epoch-changed")
        return RoomHistory(room, epoch, after, tuple(messages))

    async def _resume(
        self, wire: Wire, flow: Flow, token: str, received: int, request: Any
    ) -> None:
        try:
            answer = await self._restore(wire, flow, token, received, request)
        except EngineError as exc:
            self.log.warning("resume: the engine is unreachable: %s", exc)
            answer = ResumeFailure(TRY_AGAIN_LATER, "session store unreachable: try again")
        if isinstance(answer, ResumeFailure):
            async with self._hold(wire):
                wire.refuse_resume(answer.code, answer.reason, self.server._now())
        self._wake(wire)

    async def _restore(
        self, wire: Wire, flow: Flow, token: str, received: int, request: Any
    ) -> ResumeFailure | None:
        blob = await self.engine.take_session(token)
        if blob is None:
            # The client did not get (or use) the token its last resume handed out:
            # follow the pointer; taking that key decides who runs the session.
            pointer = await self.engine.take_session(_pointer_key(token))
            if pointer is not None:
                blob = await self.engine.take_session(pointer.decode())
        if blob is None:
            return ResumeFailure(CloseCode.SESSION_GONE, "unknown session")
        try:
            wall, detached, snapshot = _unpack(blob)
        except SnapshotError as exc:
            self.log.warning("resume: %s", exc)
            return ResumeFailure(CloseCode.SESSION_GONE, "session cannot be restored")
        if detached and time.time() - detached > snapshot.window:
            await self._end_expired(blob, flow)  # too late: it ends here, once
            return ResumeFailure(CloseCode.SESSION_GONE, "resume window expired")
        failure = check_restorable(flow, snapshot, wire.path)
        if failure is not None:
            return failure
        needs = history_needed(snapshot, received)
        if isinstance(needs, ResumeFailure):
            return needs
        member = snapshot.conn_id
        for room, info in snapshot.rooms.items():
            await self.engine.join(room, member, info)  # subscribed before fetching
        histories = {
            room: await self._fetch(room, epoch, after, member)
            for room, (epoch, after) in needs.items()
        }
        server = self.server
        for _ in range(_CATCH_UP):
            for room in self._behind(snapshot, histories):  # delivered while we fetched
                history = histories[room]
                later = await self._fetch(room, history.epoch, history.end, member)
                histories[room] = history.then(later)
            old = server.registry.get(member)
            async with self._hold(wire, None if old is None else server.wire_of(old)):
                # From the last check to the registry join nothing awaits: no delivery
                # (on this loop) can slip between.
                if self._behind(snapshot, histories):
                    continue
                plan = plan_resume(snapshot, received, histories, max_bytes=flow.max_resume_buffer)
                if isinstance(plan, ResumeFailure):
                    return plan
                self._evict(member)
                now = server._now()
                elapsed = max(0.0, time.time() - wall)
                stepper = Stepper.restore(
                    flow,
                    snapshot,
                    now - elapsed,
                    plan=plan,
                    max_queue=wire.options.max_queue,
                    registry=server.registry,
                    server=server,
                    remote_address=wire.remote_address,
                    request=request,
                    run_blocking=wire.run_blocking,
                )
                break
        else:
            return ResumeFailure(TRY_AGAIN_LATER, "the room stream did not settle: try again")
        session = ResumeSession(new_token(), wire.path, stepper, snapshot.window, holder=wire)
        kept = self._kept[session] = _Kept(wire, session)
        kept.busy = True
        try:
            for _ in range(_CATCH_UP):  # stored before a byte of it is written
                if not await self._store_once(kept):
                    return ResumeFailure(CloseCode.SESSION_GONE, "session ended while resuming")
                replay = stepper.replay
                if replay is None or not replay.needs_persist:
                    break
        finally:
            kept.busy = False
        if not kept.gone:
            kept.previous = token
            await self.engine.put_session(
                _pointer_key(token), session.token.encode(), snapshot.window + TTL_MARGIN
            )
        async with self._hold(wire):
            adopted = wire.adopt_restored(session, received, server._now())
            if adopted:
                server.adopted(wire)  # reachable by deliveries from now on
            else:
                # The client left again before it heard "resumed": keep the session
                # for its next attempt, under the token it still holds.
                kept.gone = True
                self._kept.pop(session, None)
                final = self._snapshot(kept)
                if stepper.is_detached:
                    stepper.post(stepper.forget(server._now()))
        if not adopted:
            await self.engine.drop_session(session.token)
            await self.engine.drop_session(_pointer_key(token))
            if final is not None:
                await self.engine.put_session(token, _pack(final), snapshot.window + TTL_MARGIN)
        return None

    def _behind(self, snapshot: SessionSnapshot, histories: dict[str, RoomHistory]) -> list[str]:
        """The rooms this worker delivered further in than their fetched history."""
        behind = []
        for room in snapshot.rooms:
            history = histories.get(room)
            cursor = self.server.room_position(room)
            if history is None or history.lost is not None or cursor is None:
                continue
            if cursor.epoch != history.epoch or cursor.offset > history.end:
                behind.append(room)
        return behind

    def _evict(self, member: str) -> None:
        """A stale local copy of a session resumed from the engine (this worker held
        it, half open, or has not forgotten it yet): end it without its on_close."""
        conn = self.server.registry.get(member)
        if conn is None:
            return
        stepper = stepper_of(conn)
        now = self.server._now()
        if not stepper.is_detached:
            wire = self.server.wire_of(conn)
            if wire is not None:
                wire.abort(now, "session resumed on another connection")
        if stepper.is_detached:
            stepper.post(stepper.forget(now))
        for kept in list(self._kept.values()):
            if kept.session.stepper is stepper:
                kept.gone = True
                self._kept.pop(kept.session, None)


__all__ = ["TRY_AGAIN_LATER", "TTL_MARGIN", "EngineSessions", "keeps_sessions"]
