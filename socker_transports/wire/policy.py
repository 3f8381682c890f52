"""Server-side decisions shared by the wire and the ASGI adapter (socker_transports.asgi).

The wire (socket bytes) and `socker_transports.asgi` (an ASGI server's events)
reach the same questions at different layers: which flow serves a path, whether an
origin is allowed, what a handshake hook's answer means, what a text message or an
oversize message does. Each answer is decided here, once, as a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from socker_core import Flow
from socker_core._codes import CloseCode

from .hooks import Accept, HandshakeRequest, Reject
from .options import Options


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """Close the connection with this code and reason."""

    code: int
    reason: str


#: A text message while `accept_text` is False.
TEXT_REFUSED = CloseDecision(int(CloseCode.UNSUPPORTED_DATA), "text messages are not accepted")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The handshake succeeds: run `flow`, answer with `subprotocol` and `headers`,
    seed `conn.state` with `state`."""

    flow: Flow
    subprotocol: str | None
    state: Mapping[str, Any]
    headers: Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Refused:
    """The handshake fails with an HTTP `status`. `error` is set when the cause is
    the application's (a hook that raised or answered nonsense): it is logged."""

    status: int
    reason: str
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    error: BaseException | str | None = None


def route_flow(routes: Flow | Mapping[str, Flow] | None, path: str) -> Flow | None:
    """The flow serving `path`: the one Flow, or the mapping's entry (None: 404)."""
    if isinstance(routes, Flow):
        return routes
    if routes is None:
        return None
    return routes.get(path)


def check_request(
    options: Options, routes: Flow | Mapping[str, Flow] | None, request: HandshakeRequest
) -> Refused | None:
    """What refuses an upgrade before any hook runs: origin (403) and route (404)."""
    origins = options.origins
    if origins is not None and request.origin not in origins:
        return Refused(403, f"origin {request.origin!r} not allowed")
    if route_flow(routes, request.path) is None:
        return Refused(404, f"no flow at path {request.path!r}")
    return None


def handshake_verdict(
    result: object,
    request: HandshakeRequest,
    options: Options,
    routes: Flow | Mapping[str, Flow] | None,
) -> Accepted | Refused:
    """What a handshake hook's answer (or the exception it raised; None when there
    is no hook) means for the connection."""
    if isinstance(result, BaseException):
        return Refused(500, "handshake hook raised", error=result)
    if isinstance(result, Reject):
        return Refused(result.status, "rejected by the handshake hook", result.body, result.headers)
    if result is not None and not isinstance(result, Accept):
        return Refused(
            500,
            "handshake hook returned an invalid answer",
            error=f"handshake hook returned {result!r}",
        )
    accept = result if isinstance(result, Accept) else Accept()
    flow = accept.flow or route_flow(routes, request.path)
    if flow is None:
        return Refused(404, f"no flow at path {request.path!r}")
    subprotocol = accept.subprotocol
    if subprotocol is None:
        subprotocol = next((p for p in options.subprotocols if p in request.subprotocols), None)
    if subprotocol is not None and subprotocol not in request.subprotocols:
        return Refused(
            500,
            f"subprotocol {subprotocol!r} was not offered",
            error=f"subprotocol {subprotocol!r} was not offered",
        )
    return Accepted(flow, subprotocol, accept.state, accept.headers)


def text_message(options: Options, text: str) -> str | CloseDecision:
    """A complete text message: for the flow as `str` (as the wire gives it), or the
    close it causes."""
    if not options.accept_text:
        return TEXT_REFUSED
    return text


def oversize(options: Options, size: int) -> CloseDecision | None:
    """The close a message (or the fragments so far) of `size` bytes causes, if any."""
    max_size = options.max_size
    if max_size is not None and size > max_size:
        return CloseDecision(
            int(CloseCode.MESSAGE_TOO_BIG), f"message larger than {max_size} bytes"
        )
    return None
