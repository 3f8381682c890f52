"""socker_transports: the wsproto wire layer and the drivers around it."""

from .wire import (
    Accept,
    HandshakeRequest,
    HttpResponse,
    Options,
    Reject,
    Wire,
)

__all__ = ["Accept", "HandshakeRequest", "HttpResponse", "Options", "Reject", "Wire"]
