"""The websocket opening handshake (RFC 6455 section 4) on both sides, without h11."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
from collections.abc import Sequence

from wsproto.utilities import split_comma_header

from .http1 import (
    _BAD_HTTP,
    _REQUEST_LINE,
    _TARGET,
    _h11_fields,
    _h11_head,
    _h11_write_headers,
    _Refused,
)

# The wire has the whole head in hand (`http1._HeadGuard`), so it validates and answers
# the handshake itself and hands wsproto only the frames: `wsproto.connection.Connection`
# once open. What is accepted and refused, with which status and reason, is what
# h11 + wsproto's `H11Handshake` decided (tests/transports/test_wire_h11_parity.py
# holds the two side by side).

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WEBSOCKET_VERSION = b"13"

#: RFC 6455 4.2.1: the opening request is HTTP/1.1 or later; socker speaks 1.x only.
_VERSION_NOT_SUPPORTED = 505
_SUPPORTED_VERSION = re.compile(rb"HTTP/1\.[1-9]")


def _stricter_than_h11(head: bytes) -> _Refused | None:
    """Where socker refuses what h11 (and so wsproto) accepted, checked before their
    rules. An upgrade request that h11 would read differently from a proxy in front
    of socker must not become a websocket (request smuggling): its bytes after the
    head are frames only if the head is a valid bodiless upgrade.

    - a bare LF line end (RFC 9112 2.2: a recipient may refuse it): 400;
    - a well-formed request line whose version is not HTTP/1.1 to 1.9 (RFC 6455
      4.2.1 requires 1.1 or later; HTTP/2 and later are not spoken here): 505;
    - obsolete line folding (RFC 9112 5.2: reject with 400 or unfold): 400;
    - body framing: Transfer-Encoding (any), or Content-Length other than exactly
      0 (both together included): 400."""
    if b"\n" in head.replace(b"\r\n", b""):
        return _Refused(400, "bare LF line ending")
    lines = head.split(b"\r\n")
    if _REQUEST_LINE.fullmatch(lines[0]) is not None:
        version = lines[0].rpartition(b" ")[2]
        if _SUPPORTED_VERSION.fullmatch(version) is None:
            return _Refused(
                _VERSION_NOT_SUPPORTED, f"{version.decode()} not supported: HTTP/1.1 or later 1.x"
            )
    for line in lines[1:]:
        if line[:1] == b" " or line[:1] == b"\t":
            return _Refused(400, "obsolete line folding")
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return _Refused(400, "an upgrade request has no body: Transfer-Encoding")
        if name == b"content-length" and value.strip(b" \t") != b"0":
            return _Refused(400, "an upgrade request has no body: Content-Length")
    return None


def _valid_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def _read_request(head: bytes) -> tuple[str, list[tuple[str, str]], bytes | _Refused]:
    """The request line and headers as `HandshakeRequest` shows them (lenient: names
    lowercased, values stripped, any line read as `name: value`), and the verdict
    h11 and wsproto's H11Handshake gave: the Sec-WebSocket-Key, or a `_Refused`."""
    start, block, _ = _h11_head(head)
    fields: list[tuple[bytes, bytes]] | None = None
    verdict: bytes | _Refused
    try:
        stricter = _stricter_than_h11(head)
        if stricter is not None:
            raise stricter
        if start is None or _REQUEST_LINE.fullmatch(start) is None:
            raise _Refused(400, _BAD_HTTP)
        fields = _h11_fields(block)
        verdict = _check_upgrade_request(start, fields)
    except _Refused as refused:
        verdict = refused
    if (
        fields is not None
        and start is not None
        and len(fields) == block.count(b"\r\n")  # no folded line
        and head.count(b"\n") == head.count(b"\r\n")  # no bare LF: the guard's lines
    ):
        # h11 read the guard's lines, each one valid: the lenient reading is the same.
        # Names interned: every connection keeps its request (`conn.request`), and the
        # same few names would otherwise be a string per connection each.
        headers = [
            (sys.intern(name.decode("latin-1")), value.decode("latin-1")) for name, value in fields
        ]
        return start.decode("latin-1"), headers, verdict
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append(
                (name.strip().lower().decode("latin-1"), value.strip().decode("latin-1"))
            )
    return lines[0].decode("latin-1"), headers, verdict


def _check_upgrade_request(start: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """Validate an upgrade request (its request line, already matched against h11's
    grammar, and its h11 header fields) as h11 and wsproto's H11Handshake did: return
    its Sec-WebSocket-Key, or raise `_Refused` with the status they answered."""
    hosts = 0
    connection: list[str] | None = None
    host = key = version = None
    upgrade = b""
    error: Exception | None = None
    for name, value in fields:
        if name == b"host":
            hosts += 1
        if error is not None:
            continue  # wsproto stopped at the first header it could not decode
        try:
            if name == b"connection":
                connection = split_comma_header(value)
            elif name == b"host":
                host = value
                if b"xn--" in value or not value.isascii():
                    value.decode("idna")  # as wsproto does (it may raise)
            elif name == b"sec-websocket-extensions" or name == b"sec-websocket-protocol":
                if not value.isascii():
                    split_comma_header(value)  # raises, as in wsproto
            elif name == b"sec-websocket-key":
                key = value if key is None else key + b", " + value  # wsproto joins repeats
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"upgrade":
                upgrade = value
        except Exception as exc:  # a header wsproto could not decode
            error = exc
    # h11's checks first, then wsproto's, in their order.
    if hosts > 1 or (hosts == 0 and start.endswith(b" HTTP/1.1")):
        raise _Refused(400, _BAD_HTTP)
    if not start.startswith(b"GET "):
        raise _Refused(400, "Request method must be GET")
    if error is not None:
        raise _Refused(400, f"bad upgrade request: {error}")
    if connection is None or not any(token.lower() == "upgrade" for token in connection):
        raise _Refused(400, "Missing header, 'Connection: Upgrade'")
    if version != _WEBSOCKET_VERSION:
        raise _Refused(
            426 if version else 400,
            "Missing header, 'Sec-WebSocket-Version'",
            [("Sec-WebSocket-Version", "13")],
        )
    if key is None:
        raise _Refused(400, "Missing header, 'Sec-WebSocket-Key'")
    if upgrade.lower() != b"websocket":
        raise _Refused(400, "Missing header, 'Upgrade: websocket'")
    if host is None:
        raise _Refused(400, "Missing header, 'Host'")
    return key


def _accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for `key` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _accept_response(
    key: bytes, subprotocol: str | None, headers: Sequence[tuple[str, str]]
) -> bytes:
    """The 101 answer (no extensions: permessage-deflate is never accepted). ValueError
    (or UnicodeError) for headers h11 would have refused to send."""
    token = _accept_token(key)
    if subprotocol is None and not headers:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + token + b"\r\n\r\n"
        )
    lines = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", token),
    ]
    if subprotocol is not None:
        lines.append((b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")))
    lines += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return b"HTTP/1.1 101 Switching Protocols\r\n" + _h11_write_headers(lines)


def _upgrade_request(
    host: str,
    target: str,
    nonce: bytes,
    subprotocols: Sequence[str],
    extra: list[tuple[bytes, bytes]],
) -> bytes:
    """A client's opening request, as wsproto + h11 build it (ValueError/UnicodeError
    for what they refuse)."""
    headers = [
        (b"Host", host.encode("idna")),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", nonce),
        (b"Sec-WebSocket-Version", _WEBSOCKET_VERSION),
    ]
    if subprotocols:
        headers.append((b"Sec-WebSocket-Protocol", ", ".join(subprotocols).encode("ascii")))
    headers += extra
    path = target.encode("ascii")
    if _TARGET.fullmatch(path) is None:
        raise ValueError("Illegal target characters")
    return b"GET " + path + b" HTTP/1.1\r\n" + _h11_write_headers(headers, request=True)


def _check_accept_response(
    fields: list[tuple[bytes, bytes]],
    nonce: bytes,
    offered: Sequence[str],
    extensions_out: list[str] | None = None,
) -> str | None:
    """Validate a 101 answer's headers as wsproto's H11Handshake did; return the chosen
    subprotocol, or raise (the message is the failure's reason). With
    `extensions_out` (an extension was offered), the Sec-WebSocket-Extensions values
    are appended to it for the caller to check instead of being refused here."""
    connection: list[str] | None = None
    accept = subprotocol = None
    extensions: list[str] = []
    upgrade = b""
    for name, value in fields:
        if name == b"connection":
            connection = split_comma_header(value)
        elif name == b"sec-websocket-extensions":
            if extensions_out is not None:
                extensions_out.append(value.decode("latin-1"))
            else:
                extensions = split_comma_header(value)
        elif name == b"sec-websocket-accept":
            accept = value
        elif name == b"sec-websocket-protocol":
            subprotocol = value.decode("ascii")
        elif name == b"upgrade":
            upgrade = value
    if connection is None or not any(token.lower() == "upgrade" for token in connection):
        raise ValueError("Missing header, 'Connection: Upgrade'")
    if upgrade.lower() != b"websocket":
        raise ValueError("Missing header, 'Upgrade: websocket'")
    if accept != _accept_token(nonce):
        raise ValueError("Bad accept token")
    if subprotocol is not None and subprotocol not in offered:
        raise ValueError(f"unrecognized subprotocol {subprotocol}")
    for extension in extensions:  # none was offered
        raise ValueError(f"unrecognized extension {extension.split(';', 1)[0].strip()}")
    return subprotocol
