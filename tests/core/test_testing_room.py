"""`socker_core.testing.run_room`: one server flow, several clients, rooms and
broadcast, on the fake clock."""

from __future__ import annotations

import pytest

from socker_core import Close, Connection, Flow, Registry
from socker_core.testing import RoomTranscript, run_pair, run_room


def match_server() -> Flow:
    """A player says which match it joins; everyone in the match is told."""
    flow = Flow("match")

    @flow.step
    def hello(conn: Connection, message: bytes) -> bool:
        match = message.decode()
        conn.state.match = match
        conn.join(match)
        conn.server.broadcast(f"{conn.id} joined".encode(), room=match)
        return True

    @flow.step
    def play(conn: Connection, message: bytes) -> bool:
        conn.server.broadcast(message, room=conn.state.match, skip=conn)
        return False

    @flow.on_close
    def left(conn: Connection) -> None:
        # Already out of the room: the others are told, not the one leaving.
        conn.server.broadcast(f"{conn.id} left".encode(), room=conn.state.match)

    return flow


def player(match: str, *, moves: int = 0, quit_after: int | None = None) -> Flow:
    flow = Flow("player")
    seen: list[bytes] = []

    @flow.on_open
    def start(conn: Connection) -> None:
        conn.send(match.encode())

    @flow.step
    def listen(conn: Connection, message: bytes) -> Close | bool:
        seen.append(message)
        if message.endswith(b"joined") and message.startswith(b"%s " % conn.id[:-7].encode()):
            for move in range(moves):
                conn.send(b"move %d" % move)
        if quit_after is not None and len(seen) >= quit_after:
            return Close(1000, "bye")
        return False

    return flow


def test_a_player_joining_is_told_to_everyone_in_the_match() -> None:
    transcript = run_room(
        match_server(),
        {"ann": player("m1"), "bob": player("m1"), "cat": player("m2"), "dan": player("m1")},
        stagger=1.0,
        latency=0.01,
        max_time=10.0,
    )
    assert isinstance(transcript, RoomTranscript)
    assert transcript.received("ann") == [b"ann joined", b"bob joined", b"dan joined"]
    assert transcript.received("bob") == [b"bob joined", b"dan joined"]
    assert transcript.received("cat") == [b"cat joined"]
    assert transcript.received("dan") == [b"dan joined"]
    assert transcript.registry.room("m1") == {
        transcript.servers[name].conn for name in ("ann", "bob", "dan")
    }
    assert transcript.servers["ann"].conn.server is transcript.registry
    assert transcript.outcome == "stalled"  # the players listen forever


def test_moves_reach_the_others_and_leaving_is_told() -> None:
    transcript = run_room(
        match_server(),
        {"ann": player("m", quit_after=3), "bob": player("m", moves=2)},
        stagger=1.0,
        latency=0.01,
        max_time=10.0,
    )
    assert transcript.received("ann") == [b"ann joined", b"bob joined", b"move 0"]
    assert transcript.close_of("ann") == (1000, "bye")
    assert transcript.received("bob") == [b"bob joined", b"ann left"]
    assert transcript.registry.room("m") == {transcript.servers["bob"].conn}


def test_a_broadcast_from_outside_any_handler() -> None:
    def tick(registry: Registry, now: float) -> None:
        registry.broadcast(b"tick %g" % now)

    transcript = run_room(
        match_server(),
        [player("m"), player("n")],
        latency=0.5,
        actions=[(1.0, "server", tick), (2.0, "server:client2", Close(1001, "kicked"))],
        max_time=5.0,
    )
    assert transcript.received("client1") == [b"client1 joined", b"tick 1"]
    assert transcript.received("client2") == [b"client2 joined", b"tick 1"]
    assert transcript.close_of("client2") == (1001, "kicked")
    assert transcript.close_of("client2", "server") == (1001, "kicked")


def test_the_table_and_log_name_the_client_of_each_line() -> None:
    transcript = run_room(
        match_server(), {"ann": player("m"), "bob": player("m")}, stagger=1.0, max_time=3.0
    )
    table = transcript.table()
    header, rule, *rows = table.splitlines()
    assert header == "| Server | ann | bob |"
    assert rule == "|------|------|------|"
    assert any(row.startswith("| [bob] sends `b'bob joined'`") for row in rows)
    received = transcript.table(kinds={"recv"}).splitlines()[2:]
    assert "| | receives `b'bob joined'` | |" in received  # in ann's column
    assert "server [ann]" in transcript.log()
    assert all(entry.client in ("ann", "bob", "*") for entry in transcript)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        run_room(match_server(), {})
    with pytest.raises(ValueError):
        run_room(match_server(), {"a:b": player("m")})
    with pytest.raises(ValueError):
        run_room(match_server(), {"ann": player("m")}, actions=[(0.0, "nobody", b"x")])
    with pytest.raises(TypeError):
        run_room(match_server(), {"ann": player("m")}, actions=[(0.0, "server", b"x")])


def test_run_pair_is_unchanged() -> None:
    echo = Flow("echo")
    echo.add(lambda conn, message: conn.send(message))
    hello = Flow("hello")
    hello.on_open(lambda conn: conn.send(b"hi"))
    hello.add(lambda conn, message: True)
    transcript = run_pair(echo, hello)
    assert transcript.received("client") == [b"hi"] and transcript.client_code == 1000


# -- the README's examples, as written there ---------------------------------------


def readme_match() -> Flow:
    match = Flow("match")

    @match.step
    def hello(conn: Connection, message: bytes) -> bool:
        conn.state.match = message.decode()
        conn.join(conn.state.match)
        conn.server.broadcast(f"{conn.id} joined".encode(), room=conn.state.match)
        return True

    @match.step
    def play(conn: Connection, message: bytes) -> bool:
        conn.server.broadcast(message, room=conn.state.match, skip=conn)
        return False

    @match.on_close
    def left(conn: Connection) -> None:
        if hasattr(conn.state, "match"):
            conn.server.broadcast(f"{conn.id} left".encode(), room=conn.state.match)

    return match


def test_readme_match_survives_a_close_before_hello() -> None:
    quitter = Flow("quitter")
    quitter.on_open(lambda conn: Close(1000, "changed my mind"))
    quitter.add(lambda conn, message: False)
    transcript = run_room(readme_match(), {"ann": quitter})
    assert transcript.failures() == [] and transcript.close_of("ann") == (1000, "changed my mind")


def test_readme_run_room() -> None:
    player = Flow("player")
    player.on_open(lambda conn: conn.send(b"match-1"))
    player.add(lambda conn, message: False)
    transcript = run_room(
        readme_match(), {"ann": player, "bob": player, "cat": player}, stagger=1.0
    )
    assert transcript.received("ann") == [b"ann joined", b"bob joined", b"cat joined"]
    assert transcript.table().splitlines()[0] == "| Server | ann | bob | cat |"


def test_readme_embedded_registry() -> None:
    from socker_core import Send, Stepper

    registry = Registry()
    stepper = Stepper(readme_match(), registry=registry, remote_address=("127.0.0.1", 50123))
    stepper.open(now=0.0)
    assert stepper.conn.server is registry
    events = stepper.receive(b"match-1", now=0.1)
    assert events[0] == Send(f"{stepper.id} joined".encode())
    assert registry.broadcast(b"tick", room="match-1") == 1
    assert stepper.pending_events() == [Send(b"tick")]
