"""Wire: the opening handshake, both roles. Bytes in, bytes and events out."""

from __future__ import annotations

import base64
from collections.abc import Awaitable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, RejectConnection, Request

from socker_core import Connection, Flow, LocalProtocolError, StepChanged
from socker_transports.wire import (
    Accept,
    AwaitHandshake,
    HandshakeFailed,
    HandshakeRequest,
    HttpResponse,
    Opened,
    Options,
    Phase,
    Reject,
    Wire,
)
from tests.transports.wire_peer import (
    KEY,
    Record,
    echo_flow,
    frame,
    open_client,
    parse_frames,
    upgrade_request,
)


def status_of(response: bytes | bytearray) -> int:
    return int(bytes(response).split(b" ", 2)[1])


def header_of(response: bytes | bytearray, name: str) -> str | None:
    head = bytes(response).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def body_of(response: bytes | bytearray) -> bytes:
    return bytes(response).split(b"\r\n\r\n", 1)[1]


def refused(wire: Wire, status: int) -> bytes:
    """Assert the server answered `status` and is done; return the response."""
    response = bytes(wire.data_to_send())
    assert status_of(response) == status, response
    assert wire.should_close_transport and wire.finished
    assert not wire.wants_data
    assert wire.phase is Phase.DONE
    assert wire.handshake_status == status
    assert wire.close_code == 1006
    assert wire.next_deadline is None
    failed = [e for e in wire.events() if isinstance(e, HandshakeFailed)]
    assert [f.status for f in failed] == [status]
    return response


def serve(request: bytes, routes: Flow | dict[str, Flow] | None = None, **kwargs: object) -> Wire:
    options = kwargs.pop("options", None)
    wire = Wire.server(routes or echo_flow(), 0.0, options, **kwargs)  # type: ignore[arg-type]
    wire.receive_data(request, 0.0)
    return wire


# -- server: accepting ---------------------------------------------------------------


def test_server_accepts_and_opens_the_flow() -> None:
    record = Record()
    wire = Wire.server(echo_flow(record), 0.0)
    assert wire.phase is Phase.HANDSHAKE and wire.wants_data
    wire.receive_data(upgrade_request("/game?room=3"), 0.0)
    response = bytes(wire.data_to_send())
    assert status_of(response) == 101
    assert header_of(response, "Upgrade") == "websocket"
    assert header_of(response, "Sec-WebSocket-Protocol") is None
    events = wire.events()
    assert events[0] == Opened("/game", None, "echo")
    assert isinstance(events[1], StepChanged) and events[1].to_step == "echo"
    assert wire.is_open and wire.handshake_status == 101 and record.opened == 1
    assert wire.path == "/game"


def test_accept_token_is_rfc_6455s() -> None:
    wire = serve(upgrade_request(key="dGhlIHNhbXBsZSBub25jZQ=="))
    response = wire.data_to_send()
    assert header_of(response, "Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_wsproto_client_completes_the_handshake_and_frames_flow_both_ways() -> None:
    record = Record()
    wire = Wire.server(echo_flow(record), 0.0)
    client = WSConnection(ConnectionType.CLIENT)
    wire.receive_data(client.send(Request(host="h", target="/")), 0.0)
    client.receive_data(bytes(wire.data_to_send()))
    assert isinstance(next(client.events()), AcceptConnection)
    wire.receive_data(client.send(BytesMessage(b"ping?")), 0.0)
    client.receive_data(bytes(wire.data_to_send()))
    [echo] = list(client.events())
    assert isinstance(echo, BytesMessage) and echo.data == b"ping?"


def test_frames_in_the_same_read_as_the_request_are_processed() -> None:
    record = Record()
    wire = Wire.server(echo_flow(record), 0.0)
    wire.receive_data(upgrade_request() + frame(b"one") + frame(b"two"), 0.0)
    assert record.messages == [b"one", b"two"]
    out = bytes(wire.data_to_send())
    assert out.startswith(b"HTTP/1.1 101 ")
    frames = parse_frames(body_of(out), client=True)
    assert [payload for _, payload, _ in frames] == [b"one", b"two"]


def test_handshake_trickled_byte_by_byte() -> None:
    record = Record()
    wire = Wire.server(echo_flow(record), 0.0)
    data = upgrade_request() + frame(b"hi")
    for i in range(len(data)):
        wire.receive_data(data[i : i + 1], 0.0)
    assert wire.is_open and bytes(wire.data_to_send()).startswith(b"HTTP/1.1 101 ")
    assert record.messages == [b"hi"]


def test_routes_pick_the_flow_by_path_and_unknown_paths_get_404() -> None:
    a, b = Record(), Record()
    routes = {"/a": echo_flow(a, name="flow-a"), "/b": echo_flow(b, name="flow-b")}
    wire = serve(upgrade_request("/b?x=1") + frame(b"m"), routes)
    assert Opened("/b", None, "flow-b") in wire.events()
    assert b.messages == [b"m"] and a.messages == []
    missing = serve(upgrade_request("/c"), routes)
    assert b"/c" in body_of(refused(missing, 404))


def test_route_table_is_validated() -> None:
    with pytest.raises(LocalProtocolError):
        Wire.server({}, 0.0)
    with pytest.raises(LocalProtocolError):
        Wire.server({"nope": echo_flow()}, 0.0)


def test_subprotocol_server_preference_among_the_offered() -> None:
    options = Options(subprotocols=["v2", "v1"])
    wire = serve(upgrade_request(headers=[("Sec-WebSocket-Protocol", "v1, v2")]), options=options)
    response = wire.data_to_send()
    assert header_of(response, "Sec-WebSocket-Protocol") == "v2"
    assert wire.subprotocol == "v2"
    assert Opened("/", "v2", "echo") in wire.events()


def test_subprotocol_none_in_common_means_no_header() -> None:
    wire = serve(
        upgrade_request(headers=[("Sec-WebSocket-Protocol", "other")]),
        options=Options(subprotocols=["v1"]),
    )
    response = wire.data_to_send()
    assert status_of(response) == 101
    assert header_of(response, "Sec-WebSocket-Protocol") is None
    assert wire.subprotocol is None


def test_hook_sees_the_request_and_can_choose_subprotocol_flow_state_headers() -> None:
    seen: list[HandshakeRequest] = []
    special = Flow("special")
    users: list[str] = []

    @special.step
    def first(conn: Connection, message: bytes) -> bool:
        users.append(conn.state.user)
        return False

    def hook(request: HandshakeRequest) -> Accept:
        seen.append(request)
        return Accept(
            flow=special,
            subprotocol="b",
            state={"user": "ann"},
            headers=[("X-Server", "socker")],
        )

    wire = serve(
        upgrade_request(
            "/p?q=1",
            headers=[
                ("Origin", "https://game.test"),
                ("Sec-WebSocket-Protocol", "a"),
                ("Sec-WebSocket-Protocol", "b"),
                ("X-Token", "t0k"),
            ],
        )
        + frame(b"x"),
        handshake_hook=hook,
    )
    response = wire.data_to_send()
    assert header_of(response, "Sec-WebSocket-Protocol") == "b"
    assert header_of(response, "X-Server") == "socker"
    [request] = seen
    assert (request.path, request.query, request.origin) == ("/p", "q=1", "https://game.test")
    assert request.subprotocols == ("a", "b")
    assert request.header("x-token") == request.header("X-TOKEN") == "t0k"
    assert request.header("missing") is None
    assert Opened("/p", "b", "special") in wire.events()
    assert users == ["ann"]


def test_hook_reject_sends_status_body_and_headers() -> None:
    wire = serve(
        upgrade_request(),
        handshake_hook=lambda r: Reject(401, b"who are you", [("WWW-Authenticate", "Bearer")]),
    )
    response = refused(wire, 401)
    assert body_of(response) == b"who are you"
    assert header_of(response, "WWW-Authenticate") == "Bearer"
    assert header_of(response, "Content-Length") == "11"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda r: 1 / 0, id="raises"),
        pytest.param(lambda r: "yes", id="garbage"),
        pytest.param(lambda r: Accept(subprotocol="never-offered"), id="unoffered-subprotocol"),
        pytest.param(lambda r: Accept(headers=[("X", "é\u20ac")]), id="unencodable-header"),
    ],
)
def test_hook_misbehaving_is_a_500_never_an_exception(answer: object) -> None:
    wire = serve(upgrade_request(), handshake_hook=answer)
    refused(wire, 500)


def test_reject_and_accept_validate_their_headers() -> None:
    with pytest.raises(LocalProtocolError):
        Reject(403, headers=[("X", "a\r\nSet-Cookie: evil")])
    with pytest.raises(LocalProtocolError):
        Accept(headers=[("Bad Name", "v")])
    with pytest.raises(LocalProtocolError):
        Reject(101)
    with pytest.raises(LocalProtocolError):
        HttpResponse(200, content_type="text/plain\r\nX: y")


# -- server: async hook ----------------------------------------------------------------


async def _never() -> Accept:  # pragma: no cover - never awaited in these tests
    return Accept()


def _async_hook(request: HandshakeRequest) -> Awaitable[Accept]:
    return _never()


def _pending_hook_wire(
    extra: bytes = b"", **options: object
) -> tuple[Wire, AwaitHandshake, Record]:
    record = Record()
    wire = Wire.server(
        echo_flow(record),
        0.0,
        Options(**options),  # type: ignore[arg-type]
        handshake_hook=_async_hook,
    )
    wire.receive_data(upgrade_request() + extra, 0.0)
    [pending] = wire.events()
    assert isinstance(pending, AwaitHandshake)
    pending.awaitable.close()  # type: ignore[attr-defined]
    return wire, pending, record


def test_async_hook_accept_then_held_frames_are_processed_in_order() -> None:
    wire, _, record = _pending_hook_wire(frame(b"early"))
    assert wire.phase is Phase.HOOK
    assert not wire.wants_data  # nothing is read while the hook runs
    assert wire.data_to_send() == b""
    assert wire.next_deadline == 10.0  # open_timeout still applies
    wire.receive_data(frame(b"late"), 0.5)  # a driver that read anyway loses nothing
    wire.finish_handshake(Accept(state={"k": 1}), 1.0)
    assert wire.is_open
    assert record.messages == [b"early", b"late"]
    out = bytes(wire.data_to_send())
    assert status_of(out) == 101
    assert [p for _, p, _ in parse_frames(body_of(out), client=True)] == [b"early", b"late"]


def test_async_hook_reject_and_exception() -> None:
    wire, _, _ = _pending_hook_wire()
    wire.finish_handshake(Reject(403), 1.0)
    refused(wire, 403)
    wire, _, _ = _pending_hook_wire()
    wire.finish_handshake(RuntimeError("db down"), 1.0)
    refused(wire, 500)
    wire, _, _ = _pending_hook_wire()
    wire.finish_handshake(None, 1.0)  # None accepts with the defaults
    assert wire.is_open


def test_async_hook_outlived_by_open_timeout_then_finish_is_a_no_op() -> None:
    wire, _, _ = _pending_hook_wire(open_timeout=2.0)
    wire.tick(1.9)
    assert wire.phase is Phase.HOOK
    wire.tick(2.0)
    refused(wire, 408)
    wire.finish_handshake(Accept(), 3.0)  # the driver's await finished late: ignored
    assert wire.data_to_send() == b""
    assert wire.events() == []


def test_finish_handshake_without_a_pending_hook_is_misuse() -> None:
    wire = Wire.server(echo_flow(), 0.0)
    with pytest.raises(LocalProtocolError):
        wire.finish_handshake(Accept(), 0.0)


def test_eof_while_the_hook_is_pending() -> None:
    wire, _, _ = _pending_hook_wire()
    wire.receive_data(None, 1.0)
    assert wire.finished and wire.handshake_status == 0
    assert [type(e) for e in wire.events()] == [HandshakeFailed]
    wire.finish_handshake(Accept(), 1.0)
    assert wire.data_to_send() == b""


# -- server: origins ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origins", "origin", "status"),
    [
        (["https://ok.test"], "https://ok.test", 101),
        (["https://ok.test"], "https://evil.test", 403),
        (["https://ok.test"], None, 403),
        (["https://ok.test", None], None, 101),
        (None, "https://anything.test", 101),
    ],
)
def test_origins_allow_list(
    origins: list[str | None] | None, origin: str | None, status: int
) -> None:
    headers = [] if origin is None else [("Origin", origin)]
    wire = serve(upgrade_request(headers=headers), options=Options(origins=origins))
    if status == 101:
        assert status_of(wire.data_to_send()) == 101
    else:
        refused(wire, status)


# -- server: limits and bad requests ------------------------------------------------------


def test_request_line_over_max_line_is_414_before_it_ends() -> None:
    wire = Wire.server(echo_flow(), 0.0, Options(max_line=256))
    wire.receive_data(b"GET /" + b"a" * 300, 0.0)  # no CRLF yet: refused already
    refused(wire, 414)


def test_request_line_over_max_line_complete() -> None:
    wire = serve(upgrade_request("/" + "a" * 300), options=Options(max_line=256))
    refused(wire, 414)


def test_header_line_over_max_line_is_431() -> None:
    wire = serve(upgrade_request(headers=[("X-Big", "b" * 300)]), options=Options(max_line=256))
    refused(wire, 431)
    wire = Wire.server(echo_flow(), 0.0, Options(max_line=256))
    wire.receive_data(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 300, 0.0)  # still arriving
    refused(wire, 431)


def test_too_many_headers_is_431_and_the_limit_itself_is_fine() -> None:
    base = upgrade_request().count(b"\r\n") - 2  # header lines in a plain request
    fits = [(f"X-{i}", "v") for i in range(10 - base)]
    wire = serve(upgrade_request(headers=fits), options=Options(max_headers=10))
    assert status_of(wire.data_to_send()) == 101
    wire = serve(
        upgrade_request(headers=[*fits, ("X-one-more", "v")]), options=Options(max_headers=10)
    )
    refused(wire, 431)


def test_head_guard_never_buffers_past_its_limit_when_trickled() -> None:
    wire = Wire.server(echo_flow(), 0.0, Options(max_line=256, max_headers=4))
    wire.receive_data(b"GET / HTTP/1.1\r\n", 0.0)
    for i in range(4):
        wire.receive_data(f"X-{i}: v\r\n".encode(), 0.0)
        assert not wire.should_close_transport
    wire.receive_data(b"X-4: v\r\n", 0.0)
    refused(wire, 431)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"HELLO\r\n\r\n", id="garbage"),
        pytest.param(b"\r\n\r\n", id="empty-line-first"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="plain-get-no-handler"),
        pytest.param(upgrade_request(method="POST"), id="post"),
        pytest.param(upgrade_request(key=None), id="no-key"),
        pytest.param(upgrade_request(key="not base64!"), id="key-not-base64"),
        pytest.param(upgrade_request(key=base64.b64encode(b"short").decode()), id="key-short"),
        pytest.param(upgrade_request(headers=[("Sec-WebSocket-Key", KEY)]), id="key-twice"),
        pytest.param(upgrade_request(version=None), id="no-version"),
        pytest.param(
            upgrade_request(headers=[("Sec-WebSocket-Protocol", "caf\xe9")]),
            id="non-ascii-protocol",
        ),
        pytest.param(
            upgrade_request().replace(b"Connection: Upgrade", b"Connection: \xe9"),
            id="non-ascii-connection",
        ),
        pytest.param(
            upgrade_request().replace(b"Upgrade: websocket", b"Upgrade: h2c"), id="wrong-upgrade"
        ),
        pytest.param(upgrade_request().replace(b"Host: example.test\r\n", b""), id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", id="header-without-colon"),
    ],
)
def test_bad_requests_get_400(request_bytes: bytes) -> None:
    refused(serve(request_bytes), 400)


def test_wrong_version_is_426_with_the_supported_version() -> None:
    response = refused(serve(upgrade_request(version="8")), 426)
    assert header_of(response, "Sec-WebSocket-Version") == "13"


def test_plain_http_get_with_http_handler() -> None:
    seen: list[str] = []

    def handler(request: HandshakeRequest) -> HttpResponse | None:
        seen.append(request.path)
        if request.path == "/health":
            return HttpResponse(200, b"ok\n")
        return None

    wire = serve(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler)
    response = refused(wire, 200)
    assert body_of(response) == b"ok\n"
    assert header_of(response, "Content-Type") == "text/plain; charset=utf-8"
    assert header_of(response, "Connection") == "close"
    refused(serve(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 400)
    assert seen == ["/health", "/other"]
    # Upgrades never reach the http handler.
    wire = serve(upgrade_request("/health"), http_handler=handler)
    assert status_of(wire.data_to_send()) == 101
    assert seen == ["/health", "/other"]


def test_http_handler_raising_is_a_500() -> None:
    def handler(request: HandshakeRequest) -> HttpResponse:
        raise KeyError("boom")

    refused(serve(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 500)


def test_open_timeout_ends_a_trickling_handshake_with_408() -> None:
    wire = Wire.server(echo_flow(), 100.0, Options(open_timeout=5.0))
    assert wire.next_deadline == 105.0
    data = upgrade_request()
    for i in range(40):  # a byte every 0.1 s: never idle, never done
        now = 100.0 + i * 0.1
        wire.receive_data(data[i : i + 1], now)
        wire.tick(now)
        assert wire.phase is Phase.HANDSHAKE and wire.next_deadline == 105.0
    wire.tick(104.999)
    assert not wire.should_close_transport
    wire.tick(105.0)
    refused(wire, 408)


def test_eof_during_the_handshake() -> None:
    wire = Wire.server(echo_flow(), 0.0)
    wire.receive_data(b"GET / HT", 0.0)
    wire.receive_data(b"", 1.0)
    assert wire.finished and wire.data_to_send() == b""
    assert wire.result.handshake_status == 0 and wire.result.code == 1006
    assert not wire.result.ok
    assert [type(e) for e in wire.events()] == [HandshakeFailed]
    wire.receive_data(b"more", 1.0)  # after the end: ignored, never raises
    wire.tick(100.0)


def test_close_before_the_handshake() -> None:
    wire = Wire.server(echo_flow(), 0.0)
    wire.close(1001, "shutting down")
    refused(wire, 503)
    wire.close()  # again: no-op


def test_abort_during_the_handshake() -> None:
    wire = Wire.server(echo_flow(), 0.0)
    wire.abort(0.0)
    assert wire.finished and wire.handshake_status == 0
    assert [type(e) for e in wire.events()] == [HandshakeFailed]


# -- client ---------------------------------------------------------------------------------


def test_client_request_carries_path_origin_headers_and_subprotocols() -> None:
    wire = Wire.client(
        echo_flow(),
        "example.test:8000",
        0.0,
        Options(subprotocols=["v1", "v2"]),
        path="/room?id=7",
        origin="https://game.test",
        headers=[("Authorization", "Bearer t")],
    )
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    request = next(server.events())
    assert isinstance(request, Request)
    assert request.target == "/room?id=7" and request.host == "example.test:8000"
    assert request.subprotocols == ["v1", "v2"]
    headers = dict(request.extra_headers)
    assert headers[b"origin"] == b"https://game.test"
    assert headers[b"authorization"] == b"Bearer t"
    wire.receive_data(server.send(AcceptConnection(subprotocol="v2")), 1.0)
    assert wire.is_open and wire.subprotocol == "v2" and wire.handshake_status == 101
    assert Opened("/room", "v2", "echo") in wire.events()  # the path, as on the server


def test_client_rejects_bad_options_locally() -> None:
    with pytest.raises(LocalProtocolError):
        Wire.client(echo_flow(), "h", 0.0, headers=[("X", "a\r\nb")])
    with pytest.raises(LocalProtocolError):
        Wire.client(echo_flow(), "h", 0.0, path="/with space")
    with pytest.raises(LocalProtocolError):
        Options(subprotocols="chat")


def test_client_sees_a_rejection_status() -> None:
    wire = Wire.client(echo_flow(), "h", 0.0)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    next(server.events())
    wire.receive_data(server.send(RejectConnection(status_code=403)), 0.0)
    assert wire.finished and wire.handshake_status == 403
    assert wire.events() == [HandshakeFailed(403, "server rejected the handshake")]
    assert wire.data_to_send() == b""


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: wrong\r\n\r\n",
            id="wrong-accept",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: \xe9\r\n\r\n",
            id="non-ascii-protocol",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 9000 + b"\r\n\r\n", id="header-too-long"),
        pytest.param(b"\r\n\r\n", id="empty"),
    ],
)
def test_client_bad_responses_fail_with_status_0(response: bytes) -> None:
    wire = Wire.client(echo_flow(), "h", 0.0)
    wire.data_to_send()
    wire.receive_data(response, 0.0)
    assert wire.finished and wire.handshake_status == 0
    assert [type(e) for e in wire.events()] == [HandshakeFailed]


def test_client_unoffered_subprotocol_fails() -> None:
    wire = Wire.client(echo_flow(), "h", 0.0, Options(subprotocols=["a"]))
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    next(server.events())
    response = server.send(AcceptConnection(subprotocol="a")).replace(b": a\r\n", b": b\r\n")
    wire.receive_data(response, 0.0)
    assert wire.finished and wire.handshake_status == 0


def test_client_open_timeout_and_eof() -> None:
    wire = Wire.client(echo_flow(), "h", 0.0, Options(open_timeout=3.0))
    wire.data_to_send()
    assert wire.next_deadline == 3.0
    wire.tick(3.0)
    assert wire.finished and wire.handshake_status == 0
    assert wire.data_to_send() == b""  # a client never answers with HTTP
    wire = Wire.client(echo_flow(), "h", 0.0)
    wire.receive_data(None, 0.0)
    assert wire.finished and wire.handshake_status == 0


def test_client_frames_in_the_same_read_as_the_response() -> None:
    record = Record()
    wire = Wire.client(echo_flow(record), "h", 0.0)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    next(server.events())
    data = server.send(AcceptConnection()) + server.send(BytesMessage(b"hello"))
    for i in range(0, len(data), 7):  # and split at awkward places
        wire.receive_data(data[i : i + 7], 0.0)
    assert record.messages == [b"hello"]
    server.receive_data(bytes(wire.data_to_send()))
    [echo] = list(server.events())
    assert isinstance(echo, BytesMessage) and echo.data == b"hello"


def test_client_handles_a_close_in_the_same_read_as_the_response() -> None:
    record = Record()
    wire = Wire.client(echo_flow(record), "h", 0.0)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(wire.data_to_send()))
    next(server.events())
    from wsproto.events import CloseConnection, Ping

    data = (
        server.send(AcceptConnection())
        + server.send(BytesMessage(b"m"))
        + server.send(Ping(b"p"))
        + server.send(CloseConnection(1001, "bye"))
    )
    wire.receive_data(data, 0.0)  # a message, a ping and a close all at once
    assert record.messages == [b"m"]
    assert record.closes == [(1001, "bye")]
    assert wire.phase is Phase.DRAINING


def test_open_client_helper() -> None:
    wire, _server, record = open_client()
    assert wire.is_open and record.opened == 1


def test_absolute_form_target_routes_by_its_path() -> None:
    record = Record()
    wire = serve(upgrade_request("ws://example.test/a?x=1"), {"/a": echo_flow(record)})
    assert status_of(wire.data_to_send()) == 101
    assert wire.path == "/a"


def test_client_opened_path_leaves_out_the_query_like_the_server() -> None:
    from socker_core import Flow as _Flow
    from socker_transports.wire import Opened as _Opened
    from socker_transports.wire import Wire as _Wire

    server_flow, client_flow = _Flow("s"), _Flow("c")
    server_flow.add(lambda conn, message: False, name="stay")
    client_flow.add(lambda conn, message: False, name="stay")
    client = _Wire.client(client_flow, "127.0.0.1:1", 0.0, path="/game?room=7")
    server = _Wire.server(server_flow, 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    opened = [e for e in client.events() + server.events() if isinstance(e, _Opened)]
    assert [o.path for o in opened] == ["/game", "/game"]
