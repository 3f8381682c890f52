"""The per-connection WebRTC `Session` (``conn.state.webrtc``): the peer connection
and the data channel bridge (messages that arrive before `on_channel` runs are kept
and replayed to its listeners)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection

from socker_core import Connection

logger = logging.getLogger("socker.webrtc")

#: Seconds an ``on_close`` hook waits for ``RTCPeerConnection.close()``.
PC_CLOSE_TIMEOUT = 5.0


@dataclass(eq=False)
class Session:
    """One connection's WebRTC state, kept at ``conn.state.webrtc``."""

    pc: RTCPeerConnection
    channel: RTCDataChannel | None = None
    #: Set when the channel is open, or when the negotiation failed (see `failure`).
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None
    described: bool = False  # the remote description is set
    waiting_for_candidates: bool = False  # the peer trickles and has not ended yet
    closed: bool = False
    _early: list[Any] = field(default_factory=list, repr=False)

    @property
    def is_open(self) -> bool:
        """True while the data channel is open."""
        return self.channel is not None and self.channel.readyState == "open"

    def _fail(self, why: str) -> None:
        if not self.settled.is_set():
            self.failure = why
            self.settled.set()

    def _watch(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        # Messages can arrive between the channel opening and `on_channel` attaching
        # its listeners: keep them, and replay them once `on_channel` has run.
        channel.on("message", self._keep)
        if channel.readyState == "open":
            self.settled.set()
        else:
            channel.on("open", self.settled.set)

    def _keep(self, message: Any) -> None:
        self._early.append(message)

    def _replay(self) -> None:
        channel = self.channel
        if channel is None:
            return
        channel.remove_listener("message", self._keep)
        early, self._early = self._early, []
        for message in early:
            channel.emit("message", message)

    async def close(self) -> None:
        """Close the peer connection (idempotent; bounded by PC_CLOSE_TIMEOUT)."""
        if self.closed:
            return
        self.closed = True
        self._fail("peer connection closed")
        try:
            await asyncio.wait_for(self.pc.close(), PC_CLOSE_TIMEOUT)
        except Exception:  # a broken transport must not stop the other hooks
            logger.exception("closing the RTCPeerConnection failed")


def session(conn: Connection) -> Session:
    """The connection's `Session` (LookupError before a webrtc step created it)."""
    found = getattr(conn.state, "webrtc", None)
    if not isinstance(found, Session):
        raise LookupError("no WebRTC session on this connection yet")
    return found
