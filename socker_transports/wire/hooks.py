"""What a server's handshake hook and `http_handler` see and answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from socker_core import Flow, LocalProtocolError


def _check_headers(headers: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse header names/values that would corrupt an HTTP head (CR/LF injection)."""
    for name, value in headers:
        if (
            not isinstance(name, str)
            or not isinstance(value, str)
            or not name
            or any(c in name for c in ":\r\n \t\0")
            or any(c in value for c in "\r\n\0")
        ):
            raise LocalProtocolError(f"{what}: invalid header {name!r}: {value!r}")
        try:
            name.encode("ascii")
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{what}: header {name!r} is not latin-1") from None


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a server's handshake hook (and `http_handler`) sees.

    `headers` are (lowercased name, value) pairs in arrival order."""

    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    origin: str | None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Accept:
    """Handshake hook answer: accept, optionally choosing a flow, a subprotocol and
    seeding `conn.state` with attributes (for example the authenticated user)."""

    flow: Flow | None = None
    subprotocol: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        _check_headers(self.headers, "Accept")


_DEFAULT_ACCEPT = Accept()


@dataclass(frozen=True, slots=True)
class Reject:
    """Handshake hook answer: refuse with an HTTP status (401, 403, ...; 300-599)."""

    status: int = 403
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if not 300 <= self.status <= 599:
            raise LocalProtocolError(f"Reject status must be 300-599, got {self.status}")
        _check_headers(self.headers, "Reject")


HandshakeHook = Callable[
    [HandshakeRequest], "Accept | Reject | Awaitable[Accept | Reject | None] | None"
]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A plain-HTTP answer (see `http_handler`): sent, then the transport is closed."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise LocalProtocolError(f"HttpResponse status must be 200-599, got {self.status}")
        _check_headers([("Content-Type", self.content_type)], "HttpResponse")


#: A plain-HTTP answer for a GET that is not a websocket upgrade (a health check,
#: a redirect); None lets the request fail as a bad upgrade (400).
HttpHandler = Callable[[HandshakeRequest], "HttpResponse | None"]
