"""The wire's own opening handshake against h11 + wsproto's `H11Handshake`, which it
replaced: the same requests and answers are accepted, the same are refused with the
same status, reason and headers, and the bytes written are identical.

Except where socker is deliberately stricter than h11 (`socker_stricter` below,
checked before h11's rules): a bare LF line end (400), an HTTP version other
than 1.1 to 1.9 on a well-formed request line (505), obsolete line folding (400),
and body framing on an upgrade request, Transfer-Encoding or a Content-Length
other than 0 (400). h11 accepts all of these (and wsproto then upgrades, running
a body's bytes as frames); a proxy in front of socker may read them differently.

Heads are built line by line from pieces that sit on every edge the two parsers
care about (token and field-value characters, folding, bare LF, Content-Length and
Transfer-Encoding, repeated and missing headers, non-ASCII and IDNA values)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence

import pytest
import wsproto.handshake
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import ACCEPT_GUID, RemoteProtocolError

from socker_transports.wire.handshake import (
    _accept_response,
    _check_accept_response,
    _read_request,
    _upgrade_request,
)
from socker_transports.wire.http1 import _STATUS_LINE_101, _h11_fields, _h11_head, _Refused

SETTINGS = settings(
    max_examples=int(os.environ.get("SOCKER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

Verdict = tuple[str, int, str, list[tuple[str, str]]] | tuple[str, bytes]


def head_of(lines: Sequence[bytes]) -> bytes:
    """A head as `_HeadGuard` hands it over: no empty line before the final CRLF CRLF."""
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- the reference: what the wire did with wsproto's WSConnection ----------------------


def wsproto_server(head: bytes) -> Verdict:
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
        first = next(ws.events(), None)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        assert isinstance(hint, RejectConnection)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in hint.headers]
        return ("refused", hint.status_code, str(exc), headers)
    except Exception as exc:
        return ("refused", 400, f"bad upgrade request: {exc}", [])
    assert isinstance(first, Request)
    return ("accepted", ws.send(AcceptConnection()))


def lenient(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """How the wire has always read a head for `HandshakeRequest`: every line split at
    its first colon, names lowercased, both sides stripped."""
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return lines[0].decode("latin-1"), headers


def socker_stricter(head: bytes) -> Verdict | None:
    """socker's refusals of heads h11 may accept, first match wins (restated here
    from the README's rules, independently of the wire's code)."""
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line for line in lines):
        return ("refused", 400, "bare LF line ending", [])
    request_line = re.fullmatch(
        rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+ [\x21-\x7e]+ HTTP/(\d)\.(\d)", lines[0]
    )
    if request_line is not None and not (request_line[1] == b"1" and request_line[2] != b"0"):
        version = lines[0].split(b" ")[-1].decode()
        return ("refused", 505, f"{version} not supported: HTTP/1.1 or later 1.x", [])
    for line in lines[1:]:
        if line.startswith((b" ", b"\t")):
            return ("refused", 400, "obsolete line folding", [])
        name = line.split(b":", 1)[0].strip().lower()
        value = line.split(b":", 1)[1].strip(b" \t") if b":" in line else b""
        if name == b"transfer-encoding":
            return ("refused", 400, "an upgrade request has no body: Transfer-Encoding", [])
        if name == b"content-length" and value != b"0":
            return ("refused", 400, "an upgrade request has no body: Content-Length", [])
    return None


def wire_server(head: bytes) -> Verdict:
    verdict = _read_request(head)[2]
    if isinstance(verdict, _Refused):
        return ("refused", verdict.status, verdict.reason, list(verdict.headers))
    return ("accepted", _accept_response(verdict, None, ()))


# -- requests ------------------------------------------------------------------------------

NAMES = [
    b"Host",
    b"host",
    b"Upgrade",
    b"Connection",
    b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Protocol",
    b"Sec-WebSocket-Extensions",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Origin",
    b"X-Thing",
    b"X(bad",
    b"X Bad",
    b"",
]
VALUES = [
    b"",
    b"example.test",
    b"xn--caf-dma.test",
    b"xn--zz",
    b"websocket",
    b"WebSocket",
    b"websocket, h2c",
    b"Upgrade",
    b"keep-alive, upgrade",
    b"upgrade-not",
    KEY,
    b"13",
    b"8",
    b"13, 8",
    b"chat, v2",
    b"permessage-deflate",
    b"0",
    b"5",
    b"5, 5",
    b"5, 6",
    b"x",
    b"chunked",
    b"gzip",
    b"caf\xe9",
    b"a\x01b",
    b"a\x00b",
    b"a\x0bb",
    b"a \t b",
    b"a\rb",
]
PADDING = [b"", b" ", b"\t", b"  "]

GOOD_VALUES = [v for v in VALUES if v.isascii() and not any(c in v for c in b"\x00\x0b\r")]
good_header_lines = st.builds(
    lambda name, value: name + b": " + value,
    st.sampled_from([n for n in NAMES[2:12] if n not in (b"Content-Length", b"Transfer-Encoding")]),
    st.sampled_from(GOOD_VALUES),
)
header_lines = st.one_of(
    good_header_lines,
    good_header_lines,
    good_header_lines,
    st.builds(
        lambda name, pad, value, trail: name + b":" + pad + value + trail,
        st.sampled_from(NAMES),
        st.sampled_from(PADDING),
        st.sampled_from(VALUES),
        st.sampled_from(PADDING),
    ),
    st.sampled_from([b" folded", b"\tfolded", b"no colon", b"Host : spaced", b"X-A: a\nHost: b"]),
)
request_lines = st.one_of(
    st.just(b"GET / HTTP/1.1"),
    st.just(b"GET / HTTP/1.1"),
    st.just(b"GET / HTTP/1.1"),
    st.sampled_from(
        [
            b"GET / HTTP/1.1",
            b"GET /chat?x=1 HTTP/1.1",
            b"GET ws://example.test/a HTTP/1.1",
            b"GET * HTTP/1.1",
            b"GET / HTTP/1.0",
            b"GET / HTTP/2.0",
            b"GET / HTTP/1.1x",
            b"GET / http/1.1",
            b"GET  / HTTP/1.1",
            b"get / HTTP/1.1",
            b"POST / HTTP/1.1",
            b"GET /caf\xe9 HTTP/1.1",
            b"GET /\x7f HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b"\nGET / HTTP/1.1",
            b"HELLO",
        ]
    ),
)
BASE = [
    b"Host: example.test",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + KEY,
    b"Sec-WebSocket-Version: 13",
]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    lines = [draw(request_lines)]
    base = list(BASE)
    drop = draw(st.sets(st.integers(0, len(base) - 1), max_size=2))
    lines += [line for i, line in enumerate(base) if i not in drop]
    for line in draw(st.lists(header_lines, max_size=4)):
        lines.insert(draw(st.integers(1, len(lines))), line)
    if draw(st.integers(0, 4)) == 0:  # a bare LF somewhere
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = lines[at] + b"\n" + draw(st.sampled_from([b"X-Y: z", b"", b" cont"]))
    return head_of([line for line in lines if line])


@example(head_of([b"GET / HTTP/1.1", *BASE]))
@example(head_of([b"GET / HTTP/1.1", *BASE[1:]]))  # no Host
@example(head_of([b"GET / HTTP/1.0", *BASE[1:]]))  # HTTP/1.0 without Host: wsproto's 400
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Upgrade:", b" websocket"]))
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Content-Length: 5, 6"]))
@example(head_of([b"GET / HTTP/1.1", *BASE[:4], b"Sec-WebSocket-Version: 8"]))
@example(head_of([b"GET / HTTP/1.1", *BASE[:4], b"Sec-WebSocket-Version:"]))
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Host: other"]))
@example(head_of([b"GET / HTTP/1.1\n", *BASE]))
@example(head_of([b"GET / HTTP/2.0", *BASE]))
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Content-Length: 8"]))
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Content-Length: 0"]))  # no body: accepted
@example(head_of([b"GET / HTTP/1.1", *BASE, b"Content-Length: 8", b"Transfer-Encoding: chunked"]))
@SETTINGS
@given(requests())
def test_server_verdict_matches_wsproto(head: bytes) -> None:
    """h11 + wsproto's verdict, unless one of socker's stricter rules applies."""
    assert wire_server(head) == (socker_stricter(head) or wsproto_server(head))
    assert _read_request(head)[:2] == lenient(head)


@pytest.mark.parametrize(
    ("subprotocol", "headers"),
    [
        (None, []),
        ("chat", []),
        (None, [("X-Server", "socker")]),
        ("v2", [("Set-Cookie", "a=b"), ("X-Empty", "")]),
        (None, [("Host", "h"), ("X", "1")]),  # h11 writes Host first
        (None, [("Content-Length", "0"), ("Content-Length", "0")]),  # one kept
        (None, [("Content-Length", "1, 1")]),
        (None, [("Transfer-Encoding", "Chunked")]),
        (None, [("Transfer-Encoding", "gzip")]),
        (None, [("Content-Length", "x")]),
        (None, [("X", " padded")]),
        (None, [("X", "a\x01b")]),
        (None, [("X(", "v")]),
        (None, [("X", "\xe9")]),
    ],
)
def test_accept_response_bytes_match_wsproto(
    subprotocol: str | None, headers: list[tuple[str, str]]
) -> None:
    protocols = [b"Sec-WebSocket-Protocol: chat, v2"]
    head = head_of([b"GET / HTTP/1.1", *BASE, *protocols])
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(head)
    assert isinstance(next(ws.events()), Request)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        expected: bytes | None = ws.send(
            AcceptConnection(subprotocol=subprotocol, extra_headers=extra)
        )
    except Exception:
        expected = None
    try:
        ours: bytes | None = _accept_response(KEY, subprotocol, headers)
    except Exception:
        ours = None
    assert ours == expected


# -- the client's request --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "subprotocols", "headers"),
    [
        ("example.test:8000", "/room?id=7", ["v1", "v2"], [("Origin", "https://game.test")]),
        ("h", "/", [], []),
        ("caf\xe9.test", "/", [], []),
        ("a..b", "/", [], []),
        ("h", "/with space", [], []),
        ("h", "", [], []),
        ("h", "/caf\xe9", [], []),
        ("h", "/", [], [("Host", "other")]),
        ("h", "/", [], [("X", " padded")]),
        ("h", "/", [], [("X(", "v")]),
        ("h", "/", [], [("Content-Length", "0"), ("content-length", "0")]),
        ("h", "/", [], [("Transfer-Encoding", "CHUNKED")]),
        ("h", "/", [], [("Authorization", "Bearer t"), ("X-Empty", "")]),
    ],
)
def test_client_request_bytes_match_wsproto(
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    path: str,
    subprotocols: list[str],
    headers: list[tuple[str, str]],
) -> None:
    monkeypatch.setattr(wsproto.handshake, "generate_nonce", lambda: KEY)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(host=host, target=path, extra_headers=extra, subprotocols=subprotocols)
    try:
        expected: bytes | None = ws.send(request)
    except Exception:
        expected = None
    try:
        ours: bytes | None = _upgrade_request(host, path, KEY, subprotocols, extra)
    except Exception:
        ours = None
    assert ours == expected


# -- the client reading a 101 -----------------------------------------------------------

ACCEPT = base64.b64encode(hashlib.sha1(KEY + ACCEPT_GUID).digest())
RESPONSE_NAMES = [
    b"Upgrade",
    b"Connection",
    b"Sec-WebSocket-Accept",
    b"Sec-WebSocket-Protocol",
    b"Sec-WebSocket-Extensions",
    b"Content-Length",
    b"Transfer-Encoding",
    b"X-Thing",
    b"X(bad",
]
RESPONSE_VALUES = [ACCEPT, b"wrong", b"chat", b"v3", b"", b"websocket", b"Upgrade", *VALUES[-8:]]
good_response_lines = st.builds(
    lambda name, value: name + b": " + value,
    st.sampled_from(RESPONSE_NAMES[:5]),
    st.sampled_from([ACCEPT, b"chat", b"v2", b"websocket", b"Upgrade", b"x"]),
)
response_lines = st.one_of(
    good_response_lines,
    good_response_lines,
    good_response_lines,
    st.builds(
        lambda name, pad, value: name + b":" + pad + value,
        st.sampled_from(RESPONSE_NAMES),
        st.sampled_from(PADDING),
        st.sampled_from(RESPONSE_VALUES),
    ),
    st.sampled_from([b" folded", b"no colon"]),
)
RESPONSE_BASE = [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + ACCEPT]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    lines = [
        draw(
            st.sampled_from(
                [
                    b"HTTP/1.1 101 Switching Protocols",
                    b"HTTP/1.1 101 Switching Protocols",
                    b"HTTP/1.1 101 Switching Protocols",
                    b"HTTP/1.1 101",
                    b"HTTP/1.0 101 ",
                    b"HTTP/1.1 101 caf\xe9",
                    b"HTTP/1.1 101 a\x00b",
                    b"HTTP/1.1 1010",
                ]
            )
        )
    ]
    drop = draw(st.sets(st.integers(0, len(RESPONSE_BASE) - 1), max_size=1))
    lines += [line for i, line in enumerate(RESPONSE_BASE) if i not in drop]
    for line in draw(st.lists(response_lines, max_size=3)):
        lines.insert(draw(st.integers(1, len(lines))), line)
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = lines[at] + b"\n" + draw(st.sampled_from([b"X-Y: z", b"", b" cont"]))
    return head_of([line for line in lines if line])


def wsproto_client(head: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    monkeypatch.setattr(wsproto.handshake, "generate_nonce", lambda: KEY)
    ws = WSConnection(ConnectionType.CLIENT)
    ws.send(Request(host="h", target="/", subprotocols=["chat", "v2"]))
    try:
        ws.receive_data(head)
        first = next(ws.events(), None)
    except Exception as exc:
        return ("failed", f"bad handshake response: {exc}")
    if isinstance(first, AcceptConnection):
        return ("accepted", first.subprotocol)
    assert isinstance(first, RejectConnection)
    return ("rejected", first.status_code)


def wire_client(block: bytes) -> tuple[str, object]:
    try:
        subprotocol = _check_accept_response(_h11_fields(block), KEY, ["chat", "v2"])
    except Exception as exc:
        return ("failed", f"bad handshake response: {exc}")
    return ("accepted", subprotocol)


@SETTINGS
@given(responses())
def test_client_verdict_on_a_101_matches_wsproto(head: bytes) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = wsproto_client(head, monkeypatch)
    start, block, _ = _h11_head(head)
    if start is None or _STATUS_LINE_101.fullmatch(start) is None:
        # Not a well-formed 101: the wire hands it to wsproto (Wire._client_refused).
        assert expected[0] != "accepted"
        return
    assert wire_client(block) == expected
