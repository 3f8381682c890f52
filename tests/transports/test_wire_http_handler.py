"""`http_handler` on the wire: it sees the method, its HttpResponse carries headers
(a redirect's Location, a health check's Cache-Control), HEAD gets no body, and
the headers the server owns cannot be set."""

from __future__ import annotations

import pytest

from socker_core import LocalProtocolError
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.transports.test_wire_handshake import body_of, header_of, refused, serve


def test_headers_and_method_reach_the_response() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: HandshakeRequest) -> HttpResponse | None:
        seen.append((request.method, request.path))
        if request.path == "/old":
            return HttpResponse(302, headers=[("Location", "/game")])
        if request.path == "/health" and request.method in ("GET", "HEAD"):
            return HttpResponse(200, b"ok\n", headers=[("Cache-Control", "no-store")])
        return None

    response = refused(serve(b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 302)
    assert header_of(response, "Location") == "/game"
    response = refused(serve(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 200)
    assert header_of(response, "Cache-Control") == "no-store"
    assert header_of(response, "Content-Type") == "text/plain; charset=utf-8"
    assert body_of(response) == b"ok\n"
    response = refused(
        serve(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 200
    )
    assert body_of(response) == b""
    # A method the handler declines falls through to the upgrade check (400).
    refused(serve(b"POST /health HTTP/1.1\r\nHost: x\r\n\r\n", http_handler=handler), 400)
    assert seen == [("GET", "/old"), ("GET", "/health"), ("HEAD", "/health"), ("POST", "/health")]


@pytest.mark.parametrize("name", ["Content-Length", "connection", "Transfer-Encoding"])
def test_server_owned_headers_are_refused(name: str) -> None:
    with pytest.raises(LocalProtocolError, match="set by the server"):
        HttpResponse(200, headers=[(name, "1")])


def test_header_injection_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        HttpResponse(302, headers=[("Location", "/a\r\nSet-Cookie: x=1")])
