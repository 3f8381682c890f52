"""socker_transports.webrtc: WebRTC signaling steps on aiortc (extra ``webrtc``).

Ready-made steps that plug into any `socker_core.Flow`, on either side, for both
directions the original socker supports:

- **server offers** (the original README's table): the server's ``on_open`` sends
  its buffered scene data; the client's own step handles it and sends
  `hello()`; the server's ``webrtc-offer`` step creates the peer connection and
  data channel and sends an offer; the client's ``webrtc-connect`` step answers;
  the server's ``webrtc-connect`` step sets the remote description and advances
  when the data channel opens. Then both sides are in their control steps:

      server = Flow("game")
      server.on_open(send_scene)
      webrtc.server_offers(server, on_channel=start_game)   # webrtc-offer, webrtc-connect
      server.add(control)

      client = Flow("game")
      client.add(load_scene)             # ... conn.send(webrtc.hello()); return True
      webrtc.client_answers(client, on_channel=start_game)  # webrtc-connect
      client.add(control)

- **client offers** (how the original's author used it): `client_offers` sends
  the offer when the connection opens; the server's ``webrtc-connect`` step
  (`server_answers`) stays on its step while it handles the offer and any
  candidate messages, and advances when the data channel is open.

Wire format, version 1
----------------------

Each signaling message is one *binary* websocket message holding a UTF-8 JSON
object with ``"v": 1`` and a ``"type"`` (a browser builds it with
``new TextEncoder().encode(JSON.stringify(obj))``):

    {"v": 1, "type": "hello"}                  the answering side is ready for an offer
    {"v": 1, "type": "offer",  "sdp": "v=0..."[, "trickle": true]}
    {"v": 1, "type": "answer", "sdp": "v=0..."[, "trickle": true]}
    {"v": 1, "type": "candidate", "candidate": "candidate:...", "sdpMid": "0",
     "sdpMLineIndex": 0}
    {"v": 1, "type": "candidate", "candidate": null}      end of candidates

Descriptions should carry their candidates (vanilla ICE): aiortc never trickles,
and ``socker.js`` waits for ICE gathering before it sends a description. A peer
that trickles marks its description ``"trickle": true``, sends candidate
messages, and ends them with the end-of-candidates message; the receiving step
stays on itself for each of them and only then waits for the channel (messages
that arrive while a step waits are queued for the *next* step, so a description
without ``trickle`` ends the peer's signaling). Unknown fields are ignored; an
unknown ``v`` or ``type``, invalid JSON, or a message that is not signaling
where signaling is expected closes the connection with 4400.

Close codes (socker's own, listed in `socker_core.CLOSE_CODES`)
---------------------------------------------------------------

- 4400 (`SIGNALING_ERROR`): a malformed, unsupported or out-of-order signaling
  message, or a description aiortc rejects.
- 4504 (`CHANNEL_TIMEOUT`): the data channel did not open within
  ``open_timeout`` seconds after the remote description was set (or ICE failed).
- 4408 (the core's step timeout): a signaling step waited longer than its
  ``step_timeout`` for the peer's message (``hello``, ``offer`` or ``answer``).
- 1011: a step raised; in particular the steps raise `WebRTCUnsupportedError`
  when they are not running on an asyncio event loop (see below).

State and cleanup
-----------------

The `RTCPeerConnection` is created per connection and kept, with its data
channel, in a `Session` at ``conn.state.webrtc`` (`session(conn)`). Each
installer registers an ``on_close`` hook that closes the peer connection
whatever ends the websocket: normal completion, a timeout, an error, or the peer
vanishing mid-handshake. With ``Flow(resume_window=...)`` a websocket lost
without a close handshake does not end the connection (it detaches, see the
README's "Resume"): ``on_close`` runs only when the session really ends, so the
peer connection and its data channel keep working while the websocket
reconnects and resumes. ``on_channel(conn, channel)`` (plain or async) runs
once the channel is open, before the step advances: attach
``channel.on("message")`` there. Messages that arrive on the channel before
``on_channel`` has run are kept and delivered to its listeners right after it
returns, so none is lost in between.

Drivers and event loops
-----------------------

aiortc is asyncio-only and keeps background tasks (ICE, DTLS, SCTP) running on
the event loop between messages. These steps run under:

- `socker_transports.anyio` on the asyncio backend, with or without uvloop.
  Channel callbacks run on the same loop: ``conn.send`` is fine there.
- `socker_transports.threaded`: it awaits async handlers on a private asyncio
  loop that keeps running between messages, so aiortc works; channel callbacks
  run on that loop's thread, so send on the websocket from them with
  ``threaded.send_threadsafe(conn, data)``.

They do **not** run under trio (anyio's trio backend): the first webrtc step to
run raises `WebRTCUnsupportedError` naming itself, the error is logged with the
step, and the connection closes with 1011. Any other driver works if it awaits
async handlers on one long-lived asyncio loop that keeps running between
messages.

Network
-------

Peer connections are built with ``RTCConfiguration(iceServers=[])`` unless you
pass a ``configuration`` factory: aiortc's default would contact a public STUN
server. `local_only()` is an explicit, scoped mode (tests, the demo) that keeps
ICE on 127.0.0.1: aioice gathers only a 127.0.0.1 host candidate, remote
candidates that are not loopback are dropped before aiortc sees them (so a
browser's ``*.local`` mDNS candidate never triggers multicast), and mDNS
resolution is disabled. Importing this module changes nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

try:
    from aiortc import (
        RTCConfiguration,
        RTCDataChannel,
        RTCPeerConnection,
        RTCSessionDescription,
    )
    from aiortc.sdp import candidate_from_sdp
except ModuleNotFoundError as exc:  # one line that names the extra
    raise ModuleNotFoundError(
        "socker_transports.webrtc needs the webrtc extra: pip install 'socker-steps[webrtc]'",
        name=exc.name,
    ) from exc

from socker_core import Close, Connection, Flow, JsonStateCodec, Result, SockerError

# The wire format, local-only mode and the per-connection Session each have their
# own module; the roles stay here with RTCPeerConnection, the name tests (and
# anyone guarding ICE configurations) patch on this module.
from ._webrtc_local import _filter_sdp, _is_loopback, is_local_only, local_only
from ._webrtc_session import PC_CLOSE_TIMEOUT as PC_CLOSE_TIMEOUT
from ._webrtc_session import Session, session
from ._webrtc_signal import (
    SIGNALING_VERSION,
    Signal,
    SignalingError,
    encode_signal,
    hello,
    is_signal,
    parse_signal,
)

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # a dependency on 3.10 only
    from typing_extensions import Unpack

__all__ = [
    "CHANNEL_TIMEOUT",
    "SIGNALING_ERROR",
    "SIGNALING_VERSION",
    "Answerer",
    "ChannelCallback",
    "Offerer",
    "OffererOptions",
    "RoleOptions",
    "Session",
    "Signal",
    "SignalingError",
    "WebRTCUnsupportedError",
    "client_answers",
    "client_offers",
    "encode_signal",
    "hello",
    "is_local_only",
    "is_signal",
    "local_only",
    "parse_signal",
    "peer_lost",
    "server_answers",
    "server_offers",
    "session",
]

logger = logging.getLogger("socker.webrtc")

#: Close code: malformed, unsupported or out-of-order signaling message.
SIGNALING_ERROR = 4400
#: Close code: the data channel did not open within ``open_timeout`` (or ICE failed).
CHANNEL_TIMEOUT = 4504


ChannelCallback = Callable[[Connection, RTCDataChannel], "Awaitable[Any] | None"]
ConfigurationFactory = Callable[[], RTCConfiguration]


class RoleOptions(TypedDict, total=False):
    """Keywords every installer takes (both sides). See `server_offers` for each;
    they mirror `Answerer`'s keyword parameters (tests/typing checks it)."""

    open_timeout: float
    step_timeout: float | None
    on_channel: ChannelCallback | None
    configuration: ConfigurationFactory | None
    step_prefix: str


class OffererOptions(RoleOptions, total=False):
    """The keywords of the offering side's installers (`server_offers`,
    `client_offers`): `RoleOptions` plus the data channel's own settings."""

    label: str
    ordered: bool
    max_retransmits: int | None
    max_packet_life_time: int | None
    protocol: str


class WebRTCUnsupportedError(SockerError, RuntimeError):
    """A webrtc step ran without a running asyncio event loop (aiortc is asyncio-only)."""


def _require_asyncio(step: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        library = "no async library"
        try:
            import sniffio

            library = sniffio.current_async_library()
        except Exception:
            pass
        raise WebRTCUnsupportedError(
            f"webrtc step {step!r} needs a running asyncio event loop (aiortc is "
            f"asyncio-only), but it runs under {library}: use socker_transports.anyio "
            "with the asyncio backend"
        ) from None


def _signaling_error(why: str) -> Close:
    return Close(SIGNALING_ERROR, why[:120])


# -- the two roles -------------------------------------------------------------------


class _Role:
    def __init__(
        self,
        *,
        open_timeout: float = 10.0,
        step_timeout: float | None = 30.0,
        on_channel: ChannelCallback | None = None,
        configuration: ConfigurationFactory | None = None,
        step_prefix: str = "webrtc",
    ) -> None:
        if not open_timeout > 0:
            raise ValueError(f"open_timeout must be positive, got {open_timeout!r}")
        self.open_timeout = open_timeout
        self.step_timeout = step_timeout
        self.on_channel = on_channel
        self.configuration = configuration
        self.step_prefix = step_prefix

    # building blocks

    def _new_session(self, conn: Connection) -> Session:
        existing = getattr(conn.state, "webrtc", None)
        if isinstance(existing, Session):
            raise SignalingError("a WebRTC session already exists on this connection")
        config = (
            self.configuration()
            if self.configuration is not None
            else RTCConfiguration(iceServers=[])
        )
        if config.iceServers is None:
            raise ValueError(
                "RTCConfiguration.iceServers is None: aiortc would use a public STUN "
                "server; pass a list (empty for none)"
            )
        if is_local_only() and config.iceServers:
            raise ValueError("local_only(): peer connections may not have ICE servers")
        pc = RTCPeerConnection(configuration=config)
        sess = Session(pc)
        conn.state.webrtc = sess  # stored before any await: on_close always finds it
        conn.state.webrtc_started = True  # travels in a snapshot (see peer_lost)

        @pc.on("connectionstatechange")
        def _state_changed() -> None:
            if pc.connectionState == "failed":
                sess._fail("ICE/DTLS connection failed")

        return sess

    async def _apply_candidate(self, sess: Session, signal: Signal) -> None:
        if signal.candidate is None:
            sess.waiting_for_candidates = False
            return
        text = signal.candidate.removeprefix("candidate:")
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError):
            raise SignalingError("malformed ICE candidate") from None
        if is_local_only() and not _is_loopback(candidate.ip):
            return  # dropped: not loopback (or an mDNS name)
        candidate.sdpMid = signal.sdp_mid
        candidate.sdpMLineIndex = signal.sdp_mline_index
        await sess.pc.addIceCandidate(candidate)

    async def _wait_channel(self, conn: Connection, sess: Session, step: str) -> Result:
        try:
            await asyncio.wait_for(sess.settled.wait(), self.open_timeout)
        except asyncio.TimeoutError:
            return Close(
                CHANNEL_TIMEOUT, f"data channel did not open within {self.open_timeout:g}s"
            )
        if sess.failure is not None or sess.channel is None:
            return Close(CHANNEL_TIMEOUT, f"data channel did not open: {sess.failure}"[:120])
        if self.on_channel is not None:
            outcome = self.on_channel(conn, sess.channel)
            if inspect.isawaitable(outcome):
                await outcome
        sess._replay()
        logger.debug("step %r: data channel %r open", step, sess.channel.label)
        return True

    async def cleanup(self, conn: Connection) -> None:
        """The ``on_close`` hook: close this connection's peer connection, if any."""
        sess = getattr(conn.state, "webrtc", None)
        if isinstance(sess, Session):
            await sess.close()

    async def moving(self, conn: Connection) -> None:
        """The ``on_detach`` hook: on a server that keeps sessions in an engine the
        detached session moves to the store (any worker resumes it), and a live peer
        connection cannot follow: close it now; the resumed flow renegotiates
        (`peer_lost`)."""
        if not getattr(conn.server, "keeps_sessions", False):
            return  # in-process resume: the peer connection lives on
        sess = getattr(conn.state, "webrtc", None)
        if isinstance(sess, Session):
            del conn.state.webrtc
            await sess.close()

    def _add(self, flow: Flow, handler: Any, suffix: str) -> None:
        flow.add(handler, name=f"{self.step_prefix}-{suffix}", timeout=self.step_timeout)


class Offerer(_Role):
    """The offering side: creates the peer connection, the data channel and the offer.

    `offer_step` (a step: waits for `hello`, sends the offer, advances) or `start`
    (a coroutine for an ``on_open`` hook or your own step) begins; `connect_step`
    handles the answer and candidates and advances when the channel opens.
    """

    def __init__(
        self,
        *,
        label: str = "socker",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_life_time: int | None = None,
        protocol: str = "",
        **options: Unpack[RoleOptions],
    ) -> None:
        super().__init__(**options)
        if max_retransmits is not None and max_packet_life_time is not None:
            raise ValueError("give max_retransmits or max_packet_life_time, not both")
        self.label = label
        self.ordered = ordered
        self.max_retransmits = max_retransmits
        self.max_packet_life_time = max_packet_life_time
        self.protocol = protocol

    async def start(self, conn: Connection) -> None:
        """Create the peer connection and data channel and send the offer."""
        _require_asyncio(f"{self.step_prefix}-offer")
        sess = self._new_session(conn)
        channel = sess.pc.createDataChannel(
            self.label,
            ordered=self.ordered,
            maxRetransmits=self.max_retransmits,
            maxPacketLifeTime=self.max_packet_life_time,
            protocol=self.protocol,
        )
        sess._watch(channel)
        await sess.pc.setLocalDescription(await sess.pc.createOffer())
        conn.send(encode_signal("offer", sdp=sess.pc.localDescription.sdp))

    async def offer_step(self, conn: Connection, message: bytes) -> Result:
        """Step: on the peer's `hello`, send the offer and advance."""
        name = f"{self.step_prefix}-offer"
        _require_asyncio(name)
        try:
            signal = parse_signal(message)
        except SignalingError as exc:
            return _signaling_error(f"{name}: {exc}")
        if signal.type != "hello":
            return _signaling_error(f"{name}: expected hello, got {signal.type}")
        await self.start(conn)
        return True

    async def connect_step(self, conn: Connection, message: bytes) -> Result:
        """Step: answer and candidates; advances when the data channel opens."""
        name = f"{self.step_prefix}-connect"
        _require_asyncio(name)
        try:
            signal = parse_signal(message)
            sess = getattr(conn.state, "webrtc", None)
            if not isinstance(sess, Session):
                raise SignalingError("no offer was sent")
            if signal.type == "answer":
                if sess.described:
                    raise SignalingError("a second answer")
                sess.described = True
                sess.waiting_for_candidates = signal.trickle
                await sess.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=_filter_sdp(signal.sdp or ""), type="answer")
                )
            elif signal.type == "candidate":
                if not sess.described:
                    raise SignalingError("candidate before the answer")
                await self._apply_candidate(sess, signal)
            else:
                raise SignalingError(f"unexpected {signal.type}")
        except (SignalingError, ValueError) as exc:
            return _signaling_error(f"{name}: {exc}")
        if sess.waiting_for_candidates:
            return False  # stay: the peer trickles more candidates
        return await self._wait_channel(conn, sess, name)

    def install(self, flow: Flow, *, on_hello: bool) -> None:
        """Add this side's steps (and the on_close hook) to `flow`."""
        if on_hello:
            self._add(flow, self.offer_step, "offer")
        else:
            flow.on_open(self.start)
        self._add(flow, self.connect_step, "connect")
        flow.on_close(self.cleanup)
        flow.on_detach(self.moving)
        _keep_out_of_snapshots(flow)


class Answerer(_Role):
    """The answering side: `connect_step` handles the offer and candidates, sends the
    answer, and advances when the peer's data channel is open."""

    async def connect_step(self, conn: Connection, message: bytes) -> Result:
        """Step: offer and candidates; advances when the data channel opens."""
        name = f"{self.step_prefix}-connect"
        _require_asyncio(name)
        try:
            signal = parse_signal(message)
            sess = getattr(conn.state, "webrtc", None)
            if signal.type == "offer":
                if sess is not None:
                    raise SignalingError("a second offer")
                sess = self._new_session(conn)
                sess.described = True
                sess.waiting_for_candidates = signal.trickle
                pc = sess.pc

                @pc.on("datachannel")
                def _on_channel(channel: RTCDataChannel) -> None:
                    if sess.channel is None:
                        sess._watch(channel)

                await pc.setRemoteDescription(
                    RTCSessionDescription(sdp=_filter_sdp(signal.sdp or ""), type="offer")
                )
                await pc.setLocalDescription(await pc.createAnswer())
                conn.send(encode_signal("answer", sdp=pc.localDescription.sdp))
            elif signal.type == "candidate":
                if not isinstance(sess, Session):
                    raise SignalingError("candidate before the offer")
                await self._apply_candidate(sess, signal)
            else:
                raise SignalingError(f"unexpected {signal.type}")
        except (SignalingError, ValueError) as exc:
            return _signaling_error(f"{name}: {exc}")
        if sess.waiting_for_candidates:
            return False  # stay: the peer trickles more candidates
        return await self._wait_channel(conn, sess, name)

    def install(self, flow: Flow) -> None:
        """Add the connect step (and the on_close hook) to `flow`."""
        self._add(flow, self.connect_step, "connect")
        flow.on_close(self.cleanup)
        flow.on_detach(self.moving)
        _keep_out_of_snapshots(flow)


def _keep_out_of_snapshots(flow: Flow) -> None:
    """A live peer connection cannot move between processes: a session snapshot
    (resume on another worker) leaves ``conn.state.webrtc`` out of the default JSON
    codec. A flow with its own state_codec must leave it out itself."""
    codec = flow.state_codec
    if isinstance(codec, JsonStateCodec) and "webrtc" not in codec.skip:
        flow.state_codec = JsonStateCodec(codec.factory, codec.skip | {"webrtc"})


def peer_lost(conn: Connection) -> bool:
    """True when this connection has no peer connection although its signaling had
    started: the session was resumed on another worker (a live `RTCPeerConnection`
    cannot move between processes). An ``on_resume`` hook then returns
    ``Goto("webrtc-connect")`` (or the offer step) to renegotiate; see the README's
    "Resume across workers"."""
    return getattr(conn.state, "webrtc", None) is None and getattr(
        conn.state, "webrtc_started", False
    )


# -- installers: the four sides of the two directions -------------------------------


def server_offers(flow: Flow, **options: Unpack[OffererOptions]) -> Offerer:
    """Server side, server offers: adds ``webrtc-offer`` (waits for `hello`, sends the
    offer) and ``webrtc-connect`` (answer; advances when the channel opens).

    Options: ``label``, ``ordered``, ``max_retransmits``, ``max_packet_life_time``,
    ``protocol`` (the data channel), ``open_timeout`` (4504), ``step_timeout``
    (4408), ``on_channel``, ``configuration`` (a factory of `RTCConfiguration`),
    ``step_prefix``.
    """
    offerer = Offerer(**options)
    offerer.install(flow, on_hello=True)
    return offerer


def client_answers(flow: Flow, **options: Unpack[RoleOptions]) -> Answerer:
    """Client side, server offers: adds ``webrtc-connect`` (offer -> answer; advances
    when the channel opens). An earlier step of yours sends `hello()`."""
    answerer = Answerer(**options)
    answerer.install(flow)
    return answerer


def client_offers(flow: Flow, **options: Unpack[OffererOptions]) -> Offerer:
    """Client side, client offers: sends the offer from an ``on_open`` hook and adds
    ``webrtc-connect`` (answer; advances when the channel opens)."""
    offerer = Offerer(**options)
    offerer.install(flow, on_hello=False)
    return offerer


def server_answers(flow: Flow, **options: Unpack[RoleOptions]) -> Answerer:
    """Server side, client offers: adds ``webrtc-connect``, which stays while it handles
    the offer and candidates and advances when the channel opens."""
    answerer = Answerer(**options)
    answerer.install(flow)
    return answerer
