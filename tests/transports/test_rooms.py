"""Rooms, broadcast and connection identity, on every driver and backend, over real
loopback sockets with raw-socket peers (tests/transports/rawpeer.py).

The server flow answers commands ("id", "addr", "hdr NAME", "join ROOM", ...), so
each peer asks the server about itself; broadcasts are also made from outside any
handler (the anyio server's loop through its portal, or any thread on threaded)."""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from socker_core import Connection, Flow, LocalProtocolError
from socker_transports import threaded
from tests.timing import deadline
from tests.transports.conftest import DRIVERS, StartServer, _Tracked
from tests.transports.harness import DriverHarness
from tests.transports.rawpeer import OP_CLOSE, RawPeer, upgrade_request

T = TypeVar("T")


@dataclass
class Seen:
    """What the server's hooks saw, from its own threads or tasks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    opened: list[str] = field(default_factory=list)
    closed: dict[str, tuple[frozenset[str], bool]] = field(default_factory=dict)
    codes: dict[str, int | None] = field(default_factory=dict)
    closed_event: threading.Condition = field(default_factory=threading.Condition)

    def wait_closed(self, conn_id: str) -> tuple[frozenset[str], bool]:
        with self.closed_event:
            assert self.closed_event.wait_for(lambda: conn_id in self.closed, deadline(10))
            return self.closed[conn_id]


def rooms_flow(seen: Seen) -> Flow:
    flow = Flow("rooms")

    @flow.on_open
    def opened(conn: Connection) -> None:
        with seen.lock:
            seen.opened.append(conn.id)

    @flow.step
    def command(conn: Connection, message: bytes) -> bool:
        verb, _, arg = message.partition(b" ")
        text = arg.decode()
        if verb == b"id":
            conn.send(conn.id.encode())
        elif verb == b"addr":
            assert conn.remote_address is not None
            host, port = conn.remote_address
            conn.send(f"{host}:{port}".encode())
        elif verb == b"hdr":
            conn.send((conn.request.header(text) or "-").encode())
        elif verb == b"path":
            conn.send(f"{conn.request.path}?{conn.request.query}".encode())
        elif verb == b"join":
            conn.join(text)
            conn.send(b"ok")
        elif verb == b"leave":
            conn.leave(text)
            conn.send(b"ok")
        elif verb == b"rooms":
            conn.send(",".join(sorted(conn.rooms)).encode())
        elif verb == b"shout":  # "shout ROOM TEXT": to the room's others
            room, _, words = arg.partition(b" ")
            count = conn.server.broadcast(words, room=room.decode(), skip=conn)
            conn.send(b"sent %d" % count)
        return False

    @flow.on_close
    def closed(conn: Connection) -> None:
        still_member = any(conn in conn.server.room(name) for name in conn.server.rooms)
        with seen.closed_event:
            seen.closed[conn.id] = (conn.rooms, still_member)
            seen.codes[conn.id] = conn.close_code
            seen.closed_event.notify_all()

    return flow


def outside(server: _Tracked, call: Callable[[Any], T]) -> T:
    """Run `call(driver_server)` outside any handler: on the anyio server's loop (a
    task of its portal), or on this thread for the threaded driver."""
    inner: Any = server.inner
    portal = getattr(inner, "portal", None)
    if portal is not None:
        return portal.call(call, inner.server)  # type: ignore[no-any-return]
    return call(inner.server)


def ask(peer: RawPeer, command: bytes) -> bytes:
    peer.send_message(command)
    return peer.recv_data()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def server(start_server: StartServer, seen: Seen) -> _Tracked:
    return start_server(rooms_flow(seen), ping_interval=None)


@pytest.fixture
def peers(server: _Tracked) -> Iterator[Callable[[int], list[RawPeer]]]:
    made: list[RawPeer] = []

    def make(n: int) -> list[RawPeer]:
        batch = [RawPeer.connect(server.port, "/") for _ in range(n)]
        made.extend(batch)
        return batch

    yield make
    for peer in made:
        peer.close()


def by_id(server: _Tracked, room: str) -> set[str]:
    return outside(server, lambda s: {conn.id for conn in s.room(room)})


def test_ids_are_unique_across_1000_connections(server: _Tracked, seen: Seen) -> None:
    ids: list[str] = []
    for _ in range(10):  # in batches of 100: bounded file descriptors and threads
        batch = [RawPeer.connect(server.port, "/") for _ in range(100)]
        try:
            ids += [ask(peer, b"id").decode() for peer in batch]
        finally:
            for peer in batch:
                peer.close()
    assert len(set(ids)) == 1000
    assert all(len(conn_id) == 16 for conn_id in ids)
    with seen.lock:
        assert set(ids) <= set(seen.opened)


def test_remote_address_and_request(server: _Tracked) -> None:
    peer = RawPeer.connect(server.port, handshake=False)
    with peer:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        peer.send(
            upgrade_request(server.port, "/play?match=7", key=key, headers=[("X-Player", "ann")])
        )
        assert peer.read_head().startswith(b"HTTP/1.1 101")
        host, port = peer.sock.getsockname()[:2]
        assert ask(peer, b"addr") == f"{host}:{port}".encode()
        assert ask(peer, b"hdr x-player") == b"ann"
        assert ask(peer, b"hdr X-PLAYER") == b"ann"
        assert ask(peer, b"path") == b"/play?match=7"
        assert ask(peer, b"hdr x-missing") == b"-"


def test_a_client_connection_has_an_id_and_an_address_but_no_rooms(
    driver: DriverHarness, server: _Tracked
) -> None:
    facts: dict[str, Any] = {}
    flow = Flow("client")

    @flow.on_open
    def start(conn: Connection) -> None:
        facts.update(
            id=conn.id,
            server=conn.server,
            rooms=conn.rooms,
            address=conn.remote_address,
            request=conn.request,
        )
        try:
            conn.join("lobby")
        except LocalProtocolError:
            facts["join"] = "refused"
        conn.send(b"id")

    @flow.step
    def answer(conn: Connection, message: bytes) -> bool:
        facts["server_side_id"] = message.decode()
        return True

    result = driver.run_client(server.url + "/", flow, timeout=deadline(10))
    assert result.code == 1000
    assert facts["server"] is None and facts["rooms"] == frozenset()
    assert facts["request"] is None and facts["join"] == "refused"
    assert facts["address"] == ("127.0.0.1", server.port)
    assert len(facts["id"]) == 16 and facts["id"] != facts["server_side_id"]


def test_join_leave_and_rooms(server: _Tracked, peers: Callable[[int], list[RawPeer]]) -> None:
    a, b = peers(2)
    a_id, b_id = ask(a, b"id").decode(), ask(b, b"id").decode()
    assert ask(a, b"join match-1") == b"ok"
    assert ask(a, b"join lobby") == b"ok"
    assert ask(b, b"join lobby") == b"ok"
    assert ask(a, b"rooms") == b"lobby,match-1"
    assert by_id(server, "lobby") == {a_id, b_id}
    assert by_id(server, "match-1") == {a_id}
    assert outside(server, lambda s: s.rooms) == {"lobby", "match-1"}
    assert ask(a, b"leave match-1") == b"ok"
    assert ask(a, b"rooms") == b"lobby"
    assert by_id(server, "match-1") == set()
    assert outside(server, lambda s: s.rooms) == {"lobby"}
    # The same connection objects, with conn.server being the driver's Server.
    assert outside(server, lambda s: all(conn.server is s for conn in s.room("lobby")))


def read_until(peer: RawPeer, marker: bytes) -> list[bytes]:
    got = []
    while (message := peer.recv_data()) != marker:
        got.append(message)
    return got


def test_a_broadcast_reaches_exactly_the_room_in_order(
    server: _Tracked, peers: Callable[[int], list[RawPeer]]
) -> None:
    members = peers(4)
    outsiders = peers(2)
    ids = [ask(peer, b"id").decode() for peer in members]
    for peer in members:
        assert ask(peer, b"join match") == b"ok"
    skipped = ids[1]

    def send_all(s: Any) -> list[int]:
        skip = next(conn for conn in s.room("match") if conn.id == skipped)
        counts = [s.broadcast(b"m%d" % i, room="match", skip=skip) for i in range(50)]
        counts.append(s.broadcast(b"end"))  # everyone: marks the end of the run
        return counts

    counts = outside(server, send_all)
    assert counts == [3] * 50 + [6]
    expected = [b"m%d" % i for i in range(50)]
    for index, peer in enumerate(members):
        assert read_until(peer, b"end") == ([] if ids[index] == skipped else expected)
    for peer in outsiders:
        assert read_until(peer, b"end") == []
    # From a handler: the room's others, not the sender; the count is the sender's.
    assert ask(members[0], b"shout match hello") == b"sent 3"
    for peer in members[1:]:
        assert peer.recv_data() == b"hello"


@pytest.mark.parametrize("name", [name for name in DRIVERS if name.startswith("anyio-")])
def test_anyio_hands_every_copy_to_the_kernel_within_the_call(name: str, seen: Seen) -> None:
    """No task switch per recipient: each copy is handed to the kernel during the
    call, so it reaches its peer while the loop stays blocked in the caller (no
    callback or task of the loop can run in between)."""
    running = DRIVERS[name]().start_server(rooms_flow(seen), ping_interval=None)
    peers = []
    try:
        peers = [RawPeer.connect(running.port, "/") for _ in range(20)]
        for peer in peers:
            assert ask(peer, b"join match") == b"ok"
        socks = [peer.sock for peer in peers]

        def broadcast_then_look(server: Any) -> tuple[int, int]:
            count = server.broadcast(b"now", room="match")
            end = time.monotonic() + deadline(2)
            arrived = 0
            for sock in socks:  # blocking the loop: nothing of it runs meanwhile
                readable, _, _ = select.select([sock], [], [], max(0, end - time.monotonic()))
                arrived += len(readable)
            return count, arrived

        assert outside(_Tracked(running), broadcast_then_look) == (20, 20)
        assert all(peer.recv_data() == b"now" for peer in peers)
    finally:
        for peer in peers:
            peer.close()
        running.stop()


def test_a_broadcast_over_tls(
    start_server: StartServer, seen: Seen, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts
    server = start_server(rooms_flow(seen), ssl=server_ctx, ping_interval=None)
    members = []
    try:
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=deadline(5))
            peer = RawPeer(client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
            members.append(peer)
            peer.handshake(server.port, "/")
            assert ask(peer, b"join match") == b"ok"
        for i in range(50):
            message = b"%d" % i
            assert outside(server, lambda s: s.broadcast(message, room="match")) == 3  # noqa: B023
        for peer in members:
            assert [peer.recv_data() for _ in range(50)] == [b"%d" % i for i in range(50)]
    finally:
        for peer in members:
            peer.close()


def test_a_member_leaving_mid_broadcast_does_not_stop_the_others(
    server: _Tracked, seen: Seen, peers: Callable[[int], list[RawPeer]]
) -> None:
    members = peers(6)
    for peer in members:
        assert ask(peer, b"join match") == b"ok"
    leaving = members[2]
    leaving_id = ask(leaving, b"id").decode()
    for i in range(100):
        message = b"%d" % i
        outside(server, lambda s: s.broadcast(message, room="match"))  # noqa: B023
        if i == 40:
            leaving.reset()  # gone with a TCP reset while broadcasts go on
    expected = [b"%d" % i for i in range(100)]
    for peer in members:
        if peer is not leaving:
            assert [peer.recv_data() for _ in range(100)] == expected
    rooms, still_member = seen.wait_closed(leaving_id)
    assert rooms == frozenset() and not still_member
    assert leaving_id not in by_id(server, "match")


def test_a_member_that_stops_reading_is_dropped_not_the_broadcast(
    start_server: StartServer, seen: Seen
) -> None:
    server = start_server(rooms_flow(seen), ping_interval=None, max_send_buffer=256 * 1024)
    slow = RawPeer.connect(server.port, "/", rcvbuf=4096)
    reader = RawPeer.connect(server.port, "/")
    with slow, reader:
        slow_id = ask(slow, b"id").decode()
        for peer in (slow, reader):
            assert ask(peer, b"join match") == b"ok"
        got: list[int] = []
        progress = threading.Condition()

        def read() -> None:
            while (message := reader.recv_data()) != b"end":
                with progress:
                    got.append(len(message))
                    progress.notify()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        chunk = b"x" * 16384
        sent = 0
        for _ in range(4096):  # 64 MiB at most: far beyond the kernel's buffers
            outside(server, lambda s: s.broadcast(chunk, room="match"))
            sent += 1
            with seen.lock:
                if slow_id in seen.codes:
                    break
            # Pace the broadcast to the reader: at most 8 chunks (128 KiB, half of
            # max_send_buffer) unread, so a reader slowed by a loaded machine is
            # never the one over the limit. The slow peer reads nothing at all.
            with progress:
                caught_up = progress.wait_for(lambda want=sent - 8: len(got) >= want, deadline(10))
            assert caught_up, f"the reader is stuck at {len(got)} of {sent} chunks"
        outside(server, lambda s: s.broadcast(b"end", room="match"))
        thread.join(deadline(30))
        assert not thread.is_alive()
        assert seen.codes[slow_id] == 4503  # max_send_buffer: the peer stopped reading
        assert got == [16384] * sent  # the reader lost nothing
        assert by_id(server, "match") == {ask(reader, b"id").decode()}


def test_membership_is_empty_after_close(
    server: _Tracked, seen: Seen, peers: Callable[[int], list[RawPeer]]
) -> None:
    (peer,) = peers(1)
    conn_id = ask(peer, b"id").decode()
    assert ask(peer, b"join match") == b"ok"
    assert ask(peer, b"join lobby") == b"ok"
    peer.send_close(1000)
    assert peer.expect_close(reply="fin")[0] == 1000
    rooms, still_member = seen.wait_closed(conn_id)  # as its on_close hook saw it
    assert rooms == frozenset() and not still_member
    assert outside(server, lambda s: s.rooms) == set()
    assert outside(server, lambda s: s.broadcast(b"nobody")) == 0


# -- threaded: broadcasts racing connects and disconnects ------------------------------


def test_threaded_broadcasts_race_connects_and_disconnects(
    seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    """The threaded driver only: there, broadcasts really run on many threads at once."""
    caplog.set_level(logging.WARNING, logger="socker")
    senders, per_sender, churners, per_churner = 4, 250, 4, 25
    errors: list[BaseException] = []
    late: list[list[Any]] = []
    start = threading.Barrier(senders + churners)
    with threaded.serve(rooms_flow(seen), "127.0.0.1", 0, ping_interval=None) as server:
        stayers = [RawPeer.connect(server.port, "/") for _ in range(8)]
        try:
            for peer in stayers:
                assert ask(peer, b"join all") == b"ok"

            def send(who: int) -> None:
                try:
                    start.wait(deadline(10))
                    for i in range(per_sender):
                        server.broadcast(b"%d:%d" % (who, i), room="all")
                except BaseException as exc:
                    errors.append(exc)

            def churn() -> None:
                try:
                    start.wait(deadline(10))
                    for _ in range(per_churner):
                        with RawPeer.connect(server.port, "/") as peer:
                            peer.send_message(b"join all")
                            read_until(peer, b"ok")  # broadcasts may come first
                            peer.send_close(1000)
                            frames = peer.read_until_eof()
                            closes = [i for i, f in enumerate(frames) if f.opcode == OP_CLOSE]
                            # Nothing after the server's close frame: none once closed.
                            if closes != [len(frames) - 1]:
                                late.append(frames)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
            threads += [threading.Thread(target=churn) for _ in range(churners)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(deadline(60))
            assert not any(thread.is_alive() for thread in threads)
            assert errors == []
            assert late == []
            # Every stayer got every broadcast, each sender's in its order.
            for peer in stayers:
                got = [peer.recv_data() for _ in range(senders * per_sender)]
                for who in range(senders):
                    mine = [m for m in got if m.startswith(b"%d:" % who)]
                    assert mine == [b"%d:%d" % (who, i) for i in range(per_sender)]
            with seen.lock:
                assert len(seen.opened) == 8 + churners * per_churner
        finally:
            for peer in stayers:
                peer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
