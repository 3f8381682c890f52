"""Resume on the sans-I/O wire: a client Wire and a server Wire move bytes in
memory; the test cuts the link anywhere (between frames and inside one), the
client reconnects with `resume_from`, and both transcripts must show every
message exactly once, in order."""

from __future__ import annotations

import json
import logging

import pytest

from socker_core import CloseCode, ConnectionClosedError, MemorySessionStore
from socker_transports.wire import Detached, Options, Wire
from tests.resume_flows import expected, make_pair

HOST = "127.0.0.1:9"


class Link:
    """One transport between two wires; `budget` bytes (total, both ways) pass
    before it is cut (None: never)."""

    def __init__(self, client: Wire, server: Wire, budget: int | None = None) -> None:
        self.client, self.server, self.budget = client, server, budget
        self.cut = False

    def _move(self, source: Wire, target: Wire, now: float) -> bool:
        data = bytes(source.data_to_send())
        if not data or self.cut:
            return False
        if self.budget is not None:
            if len(data) > self.budget:
                data = data[: self.budget]
                self.cut = True
            self.budget -= len(data)
        if data:
            target.receive_data(data, now)
        return True

    def pump(self, now: float, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = self._move(self.client, self.server, now)
            moved = self._move(self.server, self.client, now) or moved
            if self.client.should_close_transport and not self.cut:
                self.server.receive_data(None, now)
            if self.server.should_close_transport and not self.cut:
                self.client.receive_data(None, now)
            if not moved:
                return


def run(budgets: list[int], *, silent: bool = False, window: float = 30.0):  # type: ignore[no-untyped-def]
    """Run the flow pair, cutting the n-th transport after budgets[n] bytes."""
    server_flow, client_flow, srec, crec = make_pair(window=window)
    store = MemorySessionStore()
    options = Options(ping_interval=1.0, ping_timeout=1.0)
    now = 0.0
    client = Wire.client(client_flow, HOST, now, options, reconnect=True)
    server = Wire.server(server_flow, now, options, sessions=store)
    old: list[Wire] = []
    session = None
    for attempt in range(len(budgets) + 1):
        budget = budgets[attempt] if attempt < len(budgets) else None
        link = Link(client, server, budget)
        link.pump(now)
        if not link.cut:
            break
        # The transport is gone: RST (both notice now) or silent (keepalive notices).
        if silent:
            for _ in range(10):
                now += 1.0
                client.tick(now)
                server.tick(now)
                if client.should_close_transport and server.should_close_transport:
                    break
        else:
            client.abort(now, "reset")
            server.abort(now, "reset")
        session = client.resumable_session or session
        if session is None or session.stepper.is_closed:
            break  # the session could not be kept (the client had no token yet)
        holder = session.holder
        assert isinstance(holder, Wire) and holder.detached
        if holder is client:
            assert any(isinstance(e, Detached) for e in client.events())
        old += [client, server]
        now += 0.5
        client = Wire.client(client_flow, HOST, now, options, resume_from=holder)
        server = Wire.server(server_flow, now, options, sessions=store)
    Link(client, server).pump(now)
    return srec, crec, client, server, old, store


@pytest.mark.parametrize("budget", list(range(40, 900, 23)))
@pytest.mark.parametrize("silent", [False, True], ids=["rst", "silent"])
def test_one_cut_anywhere(budget: int, silent: bool) -> None:
    srec, crec, client, server, old, store = run([budget], silent=silent)
    if not old and crec.closed != [1000]:
        # Cut before the client knew its session (in the handshake or the "session"
        # message): nothing to resume, it ends like any drop.
        assert budget < 500
        assert crec.closed == ([1006] if crec.opened else [])
        server.tick(1000.0)  # the server's session waits out its window
        assert srec.closed == ([1006] if srec.opened else [])
        assert server.finished and len(store) == 0
        return
    assert srec.seen == expected("server")
    assert crec.seen == expected("client")
    assert srec.opened == crec.opened == 1
    if not old and srec.closed == [] and server.detached:
        # Cut in the client's reply to the server's close frame: the client is done,
        # nothing to resume; the server's closing session ends when its window does.
        assert crec.closed == [1000]
        server.tick(1000.0)
    assert srec.closed == [1000] and crec.closed == [1000]
    assert client.finished and server.finished
    assert all(wire.finished for wire in old)
    assert len(store) == 0


@pytest.mark.parametrize("silent", [False, True], ids=["rst", "silent"])
def test_five_consecutive_cuts(silent: bool) -> None:
    # Cuts 2-5 land during or just after each resume handshake (a drop while
    # reconnecting): the client retries with the token it holds.
    srec, crec, _client, _server, old, store = run([600, 400, 420, 440, 460], silent=silent)
    assert len(old) == 10
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.closed == [1000] and crec.closed == [1000]
    assert srec.detached == srec.resumed == 5
    assert crec.resumed >= 1 and crec.detached == crec.resumed
    assert all(wire.finished for wire in old) and len(store) == 0


def _open_pair(window: float = 30.0):  # type: ignore[no-untyped-def]
    server_flow, client_flow, srec, crec = make_pair(window=window)
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0, reconnect=True)
    server = Wire.server(server_flow, 0.0, sessions=store)
    link = Link(client, server, 600)
    link.pump(0.0)
    client.abort(0.0)
    server.abort(0.0)
    assert client.detached and server.detached
    return server_flow, client_flow, srec, crec, store, client, server


def test_expired_session_ends_with_4410_for_the_client() -> None:
    server_flow, client_flow, srec, crec, store, client, server = _open_pair(window=2.0)
    server.tick(2.0)  # the window ends: on_close once, 1006
    assert srec.closed == [1006] and server.finished
    retry = Wire.client(client_flow, HOST, 3.0, resume_from=client)
    fresh = Wire.server(server_flow, 3.0, sessions=store)
    Link(retry, fresh).pump(3.0)
    assert crec.closed == [CloseCode.SESSION_GONE]
    assert retry.close_code == CloseCode.SESSION_GONE


def test_token_reuse_is_refused_with_4403_and_the_session_survives() -> None:
    server_flow, client_flow, srec, crec, store, client, _server = _open_pair()
    first = Wire.client(client_flow, HOST, 1.0, resume_from=client)
    stolen_offer = [p for p in first._resume.offered if p.count(".") == 3]  # type: ignore[union-attr]
    resumed_server = Wire.server(server_flow, 1.0, sessions=store)
    Link(first, resumed_server).pump(1.0)
    assert crec.resumed == 1 and srec.resumed == 1
    # A second client presenting the spent token.
    intruder_flow = make_pair()[1]
    intruder = Wire.client(
        intruder_flow, HOST, 2.0, Options(subprotocols=("socker.resume.v1", *stolen_offer))
    )
    other_server = Wire.server(server_flow, 2.0, sessions=store)
    Link(intruder, other_server).pump(2.0)
    assert other_server.close_code == CloseCode.RESUME_REFUSED
    # The resumed connection was undisturbed: its flow ran to its normal end.
    assert resumed_server.close_code == 1000
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.closed == [1000] and crec.closed == [1000]


def test_wrong_token_is_4410_unknown() -> None:
    server_flow, client_flow, *_ = _open_pair()
    store = MemorySessionStore()
    bogus = "socker.resume." + "A" * 22 + ".0"
    intruder = Wire.client(
        client_flow, HOST, 0.0, Options(subprotocols=("socker.resume.v1", bogus))
    )
    server = Wire.server(server_flow, 0.0, sessions=store)
    Link(intruder, server).pump(0.0)
    assert server.close_code == CloseCode.SESSION_GONE


def test_takeover_of_a_half_open_session_closes_the_old_transport_with_4409() -> None:
    server_flow, client_flow, srec, crec = make_pair()
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0, reconnect=True)
    server = Wire.server(server_flow, 0.0, sessions=store)
    Link(client, server, 600).pump(0.0)
    client.abort(0.0)  # only the client noticed: the server's transport looks alive
    assert client.detached and not server.should_close_transport
    retry = Wire.client(client_flow, HOST, 0.5, resume_from=client)
    new_server = Wire.server(server_flow, 0.5, sessions=store)
    Link(retry, new_server).pump(0.5)
    assert server.should_close_transport and server.close_code == CloseCode.SESSION_TAKEN_OVER
    assert server.finished
    assert srec.seen == expected("server") and crec.seen == expected("client")
    assert srec.closed == [1000] and crec.closed == [1000]


def test_replay_overflow_while_detached_is_4413() -> None:
    server_flow, client_flow, srec, crec, store, client, server = _open_pair()
    conn = server.stepper.conn  # type: ignore[union-attr]
    with pytest.raises(ConnectionClosedError):
        for _ in range(3000):
            conn.send(b"x" * 1024)  # past max_resume_buffer (1 MiB): the session ends
    assert srec.closed == [CloseCode.RESUME_BUFFER_OVERFLOW] and server.finished
    server.collect(1.0)  # what a driver does on the wakeup: the store learns the code
    assert len(store) == 0
    retry = Wire.client(client_flow, HOST, 1.0, resume_from=client)
    fresh = Wire.server(server_flow, 1.0, sessions=store)
    Link(retry, fresh).pump(1.0)
    assert crec.closed == [CloseCode.RESUME_BUFFER_OVERFLOW]


def test_flow_changed_is_4412() -> None:
    _server_flow, client_flow, _srec, crec, store, client, _server = _open_pair()
    new_server_flow = make_pair()[0]
    retry = Wire.client(client_flow, HOST, 1.0, resume_from=client)
    fresh = Wire.server(new_server_flow, 1.0, sessions=store)
    Link(retry, fresh).pump(1.0)
    assert crec.closed == [CloseCode.FLOW_CHANGED]


def test_acks_trim_the_replay_buffer_while_connected() -> None:
    from socker_core import Connection, Flow

    server_flow = Flow("s", resume_window=30.0)

    @server_flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    client_flow = Flow("c")
    client_flow.add(lambda conn, m: False, name="sink")
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0, reconnect=True)
    server = Wire.server(server_flow, 0.0, sessions=store)
    link = Link(client, server)
    link.pump(0.0)
    for i in range(1000):
        client.send(b"%d" % i, 0.0)
        link.pump(0.0)
    assert server.stepper is not None and client.stepper is not None
    server_replay, client_replay = server.stepper.replay, client.stepper.replay
    assert server_replay is not None and client_replay is not None
    assert client_replay.received == 1000 and server_replay.received == 1000
    assert len(server_replay) < 64 and len(client_replay) < 64


def test_plain_clients_and_plain_routes_do_not_resume() -> None:
    server_flow, client_flow, srec, _crec = make_pair()
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0)  # no reconnect: no subprotocol offered
    server = Wire.server(server_flow, 0.0, sessions=store)
    Link(client, server, 300).pump(0.0)
    assert client.subprotocol is None and server.stepper is not None
    assert server.stepper.replay is None
    server.abort(0.0)
    assert srec.closed == [1006] and not server.detached


def test_the_token_is_in_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="socker")
    server_flow, client_flow, _srec, _crec, store, client, _server = _open_pair()
    session = client.resumable_session
    assert session is not None
    tokens = {session.token}
    retry = Wire.client(client_flow, HOST, 1.0, resume_from=client)
    fresh = Wire.server(server_flow, 1.0, sessions=store)
    Link(retry, fresh).pump(1.0)
    assert retry._resume is not None and retry._resume.session is not None
    tokens.add(retry._resume.session.token)
    assert len(tokens) == 2  # single use: a fresh token on every resume
    assert len(next(iter(tokens))) == 22
    text = caplog.text + repr(fresh.stepper) + repr(retry.resumable_session)
    assert "resumed" in caplog.text
    for token in tokens:
        assert token not in text


def test_session_message_is_the_first_frame() -> None:
    server_flow, client_flow, *_ = make_pair()
    store = MemorySessionStore()
    client = Wire.client(client_flow, HOST, 0.0, reconnect=True)
    server = Wire.server(server_flow, 0.0, sessions=store)
    server.receive_data(bytes(client.data_to_send()), 0.0)
    out = bytes(server.data_to_send())
    body = out.split(b"\r\n\r\n", 1)[1]
    assert body[0] == 0x81  # a text frame
    length = body[1]
    message = json.loads(body[2 : 2 + length])
    assert message["type"] == "session" and message["window"] == 30.0


def test_a_session_closed_during_a_reconnect_attempt_ends_that_attempt_cleanly() -> None:
    server_flow, client_flow, srec, crec, store, client, server = _open_pair()
    retry = Wire.client(client_flow, HOST, 1.0, resume_from=client)
    client.close(1000, "user left", 1.0)  # while the attempt is in flight
    assert crec.closed == [1000] and client.finished
    fresh = Wire.server(server_flow, 1.0, sessions=store)
    Link(retry, fresh).pump(1.0)
    assert retry.should_close_transport and retry.stepper is None
    # The attempt had resumed the server's side: the client's close ends it there.
    assert srec.closed == [1000] and fresh.finished and server.finished
