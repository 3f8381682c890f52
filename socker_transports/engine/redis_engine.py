"""The Redis engine: rooms, presence and history shared by every worker process and
machine that uses the same Redis (the `redis` extra: coredis, which runs on anyio, so
it serves asyncio, uvloop and trio alike; threads use `BlockingEngine`).

How it keeps the interface's promises (interface.py):

- Order: `publish` runs one Lua script (scripts.PUBLISH) that increments the room's
  offset, appends to its capped history stream and PUBLISHes, atomically: Redis runs
  one script at a time, so offsets and pub/sub order agree, for every worker.
- No silent gap: each subscribed room has a `RoomCursor`. A live message after a hole
  (or in another epoch) makes the reader fetch the history since the cursor first;
  after a reconnect every room is reconciled the same way (that also catches a gap at
  the tail that no later message would reveal). What history cannot fill becomes a
  `Resync` event, never silence.
- Outages: commands raise `EngineUnavailable` while Redis cannot be reached; the
  subscription reader reconnects by itself with capped exponential backoff and
  resubscribes every room that still has local members.
- Presence: each member is in a sorted set scored by its expiry (Redis's clock); the
  worker refreshes its members every `presence_heartbeat` seconds. A killed worker
  stops refreshing, so its members vanish from `presence()` at most `presence_ttl`
  seconds after its last refresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import coredis
import coredis.exceptions

from . import scripts
from .cursor import Arrival, RoomCursor
from .errors import EngineClosed, EngineError, EngineUnavailable
from .events import (
    FetchResult,
    Publication,
    Recovered,
    RoomEvent,
    StreamPosition,
    Unrecoverable,
)
from .interface import MemberInfo, Receiver, documented_by_engine
from .presence_info import encode_info

if sys.version_info < (3, 11):  # pragma: no cover - coredis depends on the backport
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("socker.engine")

DEFAULT_URL = "redis://127.0.0.1:6379/0"

#: What "Redis cannot be reached" looks like from coredis and the OS.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,
    ConnectionError,
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or every exception in a group) means Redis is unreachable."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_unreachable(inner) for inner in exc.exceptions)
    return isinstance(exc, _UNREACHABLE)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@documented_by_engine
class RedisEngine:
    """`Engine` on Redis (see the module docstring; the promises are in interface.py).

    `url` is `redis://[:password@]host:port/db` or `unix:///path/to/socket?db=N`.
    `history_size` publications per room are kept for `history_ttl` seconds (the
    window in which a worker can backfill a gap or a client can resume). A room's
    epoch lives `meta_ttl` seconds after its last use. `presence_ttl` bounds how long
    a member of a dead worker stays visible; it is refreshed every
    `presence_heartbeat` seconds (default a third of the ttl). `timeout` bounds each
    Redis command and connection attempt.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "socker",
        history_size: int = 1000,
        history_ttl: float = 300.0,
        meta_ttl: float = 86400.0,
        presence_ttl: float = 15.0,
        presence_heartbeat: float | None = None,
        timeout: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        if meta_ttl < history_ttl:
            raise ValueError("meta_ttl must be >= history_ttl (history is numbered by it)")
        heartbeat = presence_ttl / 3 if presence_heartbeat is None else presence_heartbeat
        if not 0 < heartbeat < presence_ttl:
            raise ValueError("presence_heartbeat must be > 0 and < presence_ttl")
        self.url = url
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.meta_ttl = meta_ttl
        self.presence_ttl = presence_ttl
        self.presence_heartbeat = heartbeat
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self._receiver: Receiver | None = None
        self._cursors: dict[str, RoomCursor] = {}
        self._members: dict[str, dict[str, str]] = {}  # room -> member -> info JSON
        self._channels: dict[bytes, str] = {}  # pub/sub channel -> room
        self._pubsub: Any = None  # the live coredis PubSub, None while reconnecting
        self._client: coredis.Redis[bytes] | None = None
        self._stack: AsyncExitStack | None = None
        self._room_locks: dict[str, list[Any]] = {}  # room -> [Lock, users]
        # True from a command (or the pub/sub reader) finding Redis unreachable until
        # one succeeds again: what `available` reports.
        self._down = False

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> RedisEngine:
        if self._stack is not None:
            raise RuntimeError("a RedisEngine can be entered only once at a time")
        stack = AsyncExitStack()
        try:
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                self.url,
                stream_timeout=self.timeout,
                connect_timeout=self.timeout,
            )
            self._client = await stack.enter_async_context(client)
            self._publish = self._client.register_script(scripts.PUBLISH)
            self._fetch = self._client.register_script(scripts.FETCH_SINCE)
            self._refresh = self._client.register_script(scripts.PRESENCE_REFRESH)
            self._remove = self._client.register_script(scripts.PRESENCE_REMOVE)
            self._get_presence = self._client.register_script(scripts.PRESENCE_GET)
            await self._command(self._client.ping())  # fail fast: Redis must be there now
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the group is exited
            await tg.start(self._subscriber)
            tg.start_soon(self._heartbeat)
        except BaseException:
            await stack.aclose()
            self._client = None
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            await self._forget_members()
        finally:
            try:
                await stack.aclose()
            except BaseException as error:
                # A connection that broke while stopping (Redis just restarted, say)
                # is not the caller's failure: the engine is stopped either way.
                if not _unreachable(error):
                    raise
                logger.debug("redis connection lost while the engine stopped: %r", error)
            finally:
                self._client = None
                self._pubsub = None

    async def _forget_members(self) -> None:
        """On a graceful stop, remove this worker's members from presence at once
        rather than letting them expire (best effort, bounded by `timeout`)."""
        members, self._members = self._members, {}
        with anyio.move_on_after(self.timeout, shield=True):
            for room, infos in members.items():
                _, _, presence, info = self._keys(room)
                try:
                    await self._command(self._remove(keys=[presence, info], args=list(infos)))
                except EngineUnavailable:
                    return  # they expire by their ttl

    # -- keys ------------------------------------------------------------------------

    def _keys(self, room: str) -> tuple[str, str, str, str]:
        base = f"{self.prefix}:{{{room}}}"
        return f"{base}:meta", f"{base}:history", f"{base}:presence", f"{base}:info"

    def _channel(self, room: str) -> bytes:
        return f"{self.prefix}:room:{room}".encode()

    def _redis(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise EngineClosed("the engine is not running: use `async with RedisEngine(...)`")
        return self._client

    @property
    def available(self) -> bool:
        """False while the engine knows Redis is unreachable (its last command, or its
        subscription, failed to reach it and nothing has succeeded since): callers
        can refuse work at once (`server.broadcast` raises EngineUnavailable) instead
        of queueing it. True again as soon as a command or the reconnect succeeds."""
        return self._client is not None and not self._down

    async def _command(self, request: Any) -> Any:
        try:
            result = await request
        except Exception as exc:
            if _unreachable(exc):
                self._down = True
                raise EngineUnavailable(f"redis unreachable: {exc}") from exc
            if isinstance(exc, coredis.exceptions.RedisError):
                # An error reply (out of memory, read-only replica...): the client's
                # own exception types stay behind the engine's.
                raise EngineError(f"redis refused: {exc}") from exc
            raise
        self._down = False
        return result

    # -- the Engine interface --------------------------------------------------------

    def set_receiver(self, receiver: Receiver | None) -> None:
        self._receiver = receiver

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._cursors)

    async def publish(self, room: str, data: bytes) -> StreamPosition:
        self._redis()
        meta, history, _, _ = self._keys(room)
        offset, epoch = await self._command(
            self._publish(
                keys=[meta, history],
                args=[
                    bytes(data),
                    self.history_size,
                    math.ceil(self.history_ttl),
                    math.ceil(self.meta_ttl),
                    self._channel(room),
                    secrets.token_hex(8),
                ],
            )
        )
        return StreamPosition(int(offset), _text(epoch))

    async def publish_many(
        self, items: Sequence[tuple[str, bytes]]
    ) -> list[StreamPosition | EngineError]:
        """Publish several `(room, data)` in order, in one round trip (a pipeline on
        one connection: Redis runs the scripts in this order). Each result is the
        publication's position, or the EngineError its own command got. Raises
        EngineUnavailable (nothing confirmed) when Redis cannot be reached."""
        client = self._redis()
        requests: list[Any] = []

        async def pipelined() -> None:
            async with client.pipeline(
                transaction=False, raise_on_error=False, timeout=self.timeout
            ) as pipe:
                for room, data in items:
                    meta, history, _, _ = self._keys(room)
                    requests.append(
                        self._publish(
                            keys=[meta, history],
                            args=[
                                bytes(data),
                                self.history_size,
                                math.ceil(self.history_ttl),
                                math.ceil(self.meta_ttl),
                                self._channel(room),
                                secrets.token_hex(8),
                            ],
                            client=pipe,
                        )
                    )

        await self._command(pipelined())
        results: list[StreamPosition | EngineError] = []
        for request in requests:
            try:
                reply = await self._command(request)
                if isinstance(reply, BaseException):  # (raise_on_error=False)
                    raise EngineError(f"redis refused: {reply}")
                offset, epoch = reply
            except EngineError as exc:
                results.append(exc)
            else:
                results.append(StreamPosition(int(offset), _text(epoch)))
        return results

    async def position(self, room: str) -> StreamPosition:
        result = await self.fetch_since(room, StreamPosition(0, ""))
        return result.position

    async def fetch_since(self, room: str, since: StreamPosition) -> FetchResult:
        self._redis()
        meta, history, _, _ = self._keys(room)
        top, epoch, entries = await self._command(
            self._fetch(
                keys=[meta, history],
                args=[since.offset, since.epoch, secrets.token_hex(8), math.ceil(self.meta_ttl)],
            )
        )
        now = StreamPosition(int(top), _text(epoch))
        if since.epoch != now.epoch:
            return Unrecoverable(room, "epoch-changed", now)
        if since.offset > now.offset:
            return Unrecoverable(room, "unknown-position", now)
        publications = tuple(
            Publication(room, int(_text(entry_id).partition("-")[0]), now.epoch, bytes(fields[1]))
            for entry_id, fields in entries
        )
        expected = since.offset + 1
        if since.offset < now.offset and (not publications or publications[0].offset != expected):
            return Unrecoverable(room, "trimmed", now)
        return Recovered(publications, now)

    async def join(self, room: str, member: str, info: MemberInfo | None = None) -> StreamPosition:
        self._redis()
        encoded = encode_info(info)
        async with self._lock(room):
            # Subscribed first, visible in presence second: whoever sees the member in
            # presence and then publishes reaches it.
            cursor = self._cursors.get(room)
            try:
                if cursor is None:
                    cursor = await self._subscribe(room)
                await self._refresh_presence(room, [(member, encoded)])
            except BaseException:
                if not self._members.get(room):
                    await self._unsubscribe(room)  # no trace on this worker
                raise
            self._members.setdefault(room, {})[member] = encoded
            return cursor.position

    async def leave(self, room: str, member: str) -> None:
        self._redis()
        async with self._lock(room):
            members = self._members.get(room)
            if members is None or member not in members:
                return
            del members[member]
            if not members:
                del self._members[room]
                await self._unsubscribe(room)
            _, _, presence, info = self._keys(room)
            # Locally gone already: if Redis is down now, the member expires by its ttl.
            await self._command(self._remove(keys=[presence, info], args=[member]))

    async def presence(self, room: str) -> dict[str, dict[str, str]]:
        self._redis()
        _, _, presence, info = self._keys(room)
        flat = await self._command(self._get_presence(keys=[presence, info]))
        members: dict[str, dict[str, str]] = {}
        for index in range(0, len(flat), 2):
            members[_text(flat[index])] = json.loads(flat[index + 1])
        return members

    def _session_key(self, key: str) -> str:
        # Hashed: a resume token is a credential, and Redis keys show up in KEYS,
        # MONITOR and slow logs. 256 bits of SHA-256 keep the keys distinct.
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:session:{digest}"

    async def put_session(self, key: str, data: bytes, ttl: float) -> None:
        redis = self._redis()
        await self._command(
            redis.set(self._session_key(key), bytes(data), px=max(1, math.ceil(ttl * 1000)))
        )

    async def take_session(self, key: str) -> bytes | None:
        redis = self._redis()
        data = await self._command(redis.getdel(self._session_key(key)))
        return None if data is None else bytes(data)

    async def drop_session(self, key: str) -> None:
        redis = self._redis()
        await self._command(redis.delete([self._session_key(key)]))

    # -- subscriptions ---------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, room: str) -> AsyncIterator[None]:
        """Serialise join/leave per room; the lock lives only while someone holds or
        awaits it (rooms come and go: per-match rooms must not leak locks)."""
        entry = self._room_locks.get(room)
        if entry is None:
            entry = self._room_locks[room] = [anyio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._room_locks[room]

    async def _subscribe(self, room: str) -> RoomCursor:
        """Subscribe this worker to `room`: start its cursor at the room's position,
        subscribe, then reconcile what was published in between."""
        cursor = RoomCursor(room, await self.position(room))
        self._cursors[room] = cursor
        channel = self._channel(room)
        self._channels[channel] = room
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await pubsub.subscribe(channel)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                # The reader is reconnecting: it subscribes every room it has then.
        await self._reconcile(cursor)
        return cursor

    async def _unsubscribe(self, room: str) -> None:
        self._cursors.pop(room, None)
        channel = self._channel(room)
        self._channels.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await pubsub.unsubscribe(channel)
            except Exception as exc:
                if not _unreachable(exc):
                    raise

    async def _reconcile(self, cursor: RoomCursor) -> None:
        """Deliver what history holds after the cursor (or a Resync)."""
        for _attempt in range(2):  # the second only after an epoch change
            result = await self.fetch_since(cursor.room, cursor.position)
            if self._cursors.get(cursor.room) is not cursor:
                return  # unsubscribed meanwhile
            self._deliver(cursor.apply_fetch(result))
            if not (isinstance(result, Unrecoverable) and result.reason == "epoch-changed"):
                return

    def _deliver(self, events: Iterable[RoomEvent]) -> None:
        receiver = self._receiver
        for event in events:
            if not isinstance(event, Publication):
                logger.warning(
                    "room %r: resync (%s) at %s", event.room, event.reason, event.position
                )
            if receiver is None:
                continue
            try:
                receiver(event)
            except Exception:
                logger.exception("the engine's receiver raised on %r", event)

    async def _on_message(self, channel: bytes, payload: bytes) -> None:
        room = self._channels.get(channel)
        cursor = self._cursors.get(room) if room is not None else None
        if cursor is None:
            return  # unsubscribed meanwhile
        head, _, rest = payload.partition(b":")
        epoch, _, data = rest.partition(b":")
        try:
            publication = Publication(cursor.room, int(head), epoch.decode("ascii"), data)
        except ValueError:  # not from our publish script: someone else used the channel
            logger.warning("room %r: ignored a malformed message on its channel", cursor.room)
            return
        for _attempt in range(3):
            arrival = cursor.classify(publication)
            if arrival is not Arrival.GAP:
                break
            await self._reconcile(cursor)
        if arrival is Arrival.DELIVER:
            self._deliver(cursor.accept(publication))
        elif arrival is Arrival.GAP:  # pragma: no cover - history moved on three times
            self._deliver(cursor.apply_fetch(await self.fetch_since(cursor.room, cursor.position)))

    async def _subscriber(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The pub/sub reader: (re)connect, subscribe every room, reconcile, read."""
        delay, cap = self.reconnect_delay
        started = False
        client = self._redis()
        while True:
            try:
                async with client.pubsub(
                    retry_policy=None,
                    ignore_subscribe_messages=True,
                    subscription_timeout=self.timeout,
                    max_idle_seconds=max(1.0, self.timeout),
                ) as pubsub:
                    subscribed = set(self._channels)
                    if subscribed:
                        await pubsub.subscribe(*subscribed)
                    # Rooms joined or left while that subscribe was in flight saw no
                    # pub/sub to use (None) and count on this reader: catch up, or a
                    # room joined at that moment would stay deaf.
                    self._pubsub = pubsub
                    missing = [c for c in self._channels if c not in subscribed]
                    stale = [c for c in subscribed if c not in self._channels]
                    if missing:
                        await pubsub.subscribe(*missing)
                    if stale:
                        await pubsub.unsubscribe(*stale)
                    self._down = False
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        logger.warning(
                            "redis pub/sub reconnected; reconciling %d rooms", len(self._cursors)
                        )
                        for cursor in list(self._cursors.values()):
                            await self._reconcile(cursor)
                    delay = self.reconnect_delay[0]
                    while True:  # (iterating a PubSub stops while it has no channel)
                        message = await pubsub.get_message()
                        if message is not None and message["type"] == "message":
                            channel, data = message["channel"], message["data"]
                            assert isinstance(channel, bytes) and isinstance(data, bytes)
                            await self._on_message(channel, data)
            except Exception as exc:
                if _unreachable(exc) or isinstance(exc, EngineUnavailable):
                    self._down = True
                    logger.warning("redis pub/sub lost (%s); reconnecting in %.2fs", exc, delay)
                else:  # an error reply, say: start over (and reconcile) rather than die
                    logger.exception("redis pub/sub failed; reconnecting in %.2fs", delay)
            finally:
                self._pubsub = None
            if not started:  # pragma: no cover - ping succeeded just before
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(cap, delay * 2)

    # -- presence --------------------------------------------------------------------

    async def _refresh_presence(self, room: str, members: list[tuple[str, str]]) -> None:
        _, _, presence, info = self._keys(room)
        args: list[Any] = [math.ceil(self.presence_ttl * 1000)]
        for member, encoded in members:
            args += [member, encoded]
        await self._command(self._refresh(keys=[presence, info], args=args))

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.presence_heartbeat)
            for room, members in list(self._members.items()):
                try:
                    await self._refresh_presence(room, list(members.items()))
                except EngineUnavailable as exc:
                    logger.warning("presence refresh of %r failed: %s", room, exc)
                except Exception:  # an error reply: keep the heartbeat alive for the rest
                    logger.exception("presence refresh of %r failed", room)
