"""socker_transports: the wsproto wire layer and the drivers around it."""

from socker_core import __version__

from .wire import (
    Accept,
    CloseResult,
    HandshakeRequest,
    HttpResponse,
    Options,
    Reject,
    Wire,
)

__all__ = [
    "Accept",
    "CloseResult",
    "HandshakeRequest",
    "HttpResponse",
    "Options",
    "Reject",
    "Wire",
    "__version__",
]
