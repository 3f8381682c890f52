"""socker_transports.webrtc on real loopback sockets: aiortc on both ends."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from socker_core import CLOSE_CODES, Close, Connection, Flow, Result
from socker_transports import threaded, webrtc
from socker_transports.anyio import run_client, serve
from socker_transports.wire import Accept, HandshakeRequest
from tests.timing import deadline

from . import guard
from .peer import CLIENT_OFFERS, DIRECTIONS, SCENE, SERVER_OFFERS, VANISH_POINTS, echo_server_flow

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def run(coro: Awaitable[T], seconds: float) -> T:
    """Run `coro` on a fresh asyncio loop, bounded by `seconds` (scaled)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, deadline(seconds))

    return asyncio.run(bounded())


async def spawn_peer(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.webrtc.peer",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_json(proc: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), deadline(seconds))
    assert line, "the peer process ended without reporting"
    record: dict[str, Any] = json.loads(line)
    return record


async def eventually(check: Callable[[], bool], seconds: float, what: str) -> None:
    end = asyncio.get_running_loop().time() + deadline(seconds)
    while not check():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def udp_sockets() -> int:
    """UDP sockets this process holds (fds whose inode is in /proc/net/udp{,6})."""
    inodes = set()
    for table in ("udp", "udp6"):
        with open(f"/proc/self/net/{table}") as lines:
            next(lines)
            inodes.update(line.split()[9] for line in lines)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            count += 1
    return count


def echo_client_flow(
    direction: str,
    got: list[bytes],
    count: int,
    send: Callable[[Connection, bytes], None] = Connection.send,
    **options: Any,
) -> Flow:
    """Client of `peer.echo_server_flow`: `count` pings on the channel, then b"done"
    on the websocket, sent with `send(conn, data)` from the channel's callback."""
    flow = Flow(f"echo-client-{direction}")

    def on_channel(conn: Connection, channel: Any) -> None:
        @channel.on("message")
        def collect(message: bytes) -> None:
            got.append(message)
            if len(got) == count + 1:
                send(conn, b"done")

        for i in range(count):
            channel.send(b"ping%d" % i)

    if direction == SERVER_OFFERS:

        @flow.step
        def scene(conn: Connection, message: bytes) -> Result:
            if message != SCENE:
                return Close(4000, "bad scene")
            conn.send(webrtc.hello())
            return True

        webrtc.client_answers(flow, on_channel=on_channel, **options)
    else:
        webrtc.client_offers(flow, on_channel=on_channel, label="echo", **options)

    @flow.step
    def control(conn: Connection, message: bytes) -> Result:
        return False

    return flow


# -- the happy path: two processes, both directions -----------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_two_processes_both_directions(direction: str, ice_guard: guard.Record) -> None:
    """Server in a child process, client here: handshake, channel messages both ways."""
    count = 20

    async def scenario() -> None:
        proc = await spawn_peer("server", "--direction", direction, "--timeout", "30")
        try:
            url = (await read_json(proc, 20))["url"]
            got: list[bytes] = []
            result = await run_client(url, echo_client_flow(direction, got, count))
            report = (await read_json(proc, 20))["result"]
            assert await asyncio.wait_for(proc.wait(), deadline(10)) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert (result.code, result.reason) == (1000, "flow complete")
        assert got == [b"welcome"] + [b"echo:ping%d" % i for i in range(count)]
        assert report["received"] == [f"ping{i}" for i in range(count)]
        assert report["closes"] == [{"code": 1000, "step": "control"}]
        assert (report["peers"], report["open_peers"], report["problems"]) == (1, 0, [])
        assert len(ice_guard.peers) == 1 and ice_guard.open_peers() == []

    run(scenario(), 60)


def test_uvloop_in_one_process(ice_guard: guard.Record) -> None:
    """The anyio driver on asyncio with uvloop: both sides in this process."""
    received: list[bytes] = []
    got: list[bytes] = []

    async def scenario() -> Any:
        import asyncio as aio

        assert type(aio.get_running_loop()).__module__.startswith("uvloop")
        with anyio.fail_after(deadline(30)):
            flow = echo_server_flow(SERVER_OFFERS, received)
            async with serve(flow, "127.0.0.1", 0) as server:
                return await run_client(server.url, echo_client_flow(SERVER_OFFERS, got, 10))

    result = anyio.run(scenario, backend="asyncio", backend_options={"use_uvloop": True})
    assert (result.code, result.reason) == (1000, "flow complete")
    assert got == [b"welcome"] + [f"echo:ping{i}".encode() for i in range(10)]
    assert len(received) == 10
    assert len(ice_guard.peers) == 2 and ice_guard.open_peers() == []


# -- faults: the client vanishes at each step of the handshake ------------------------

#: vanish point -> (the server's possible steps when the connection ends, a session
#: exists?). None: either (the step's coroutine may be cancelled before it started).
#: After "hello" the server may or may not have sent its offer before it sees EOF.
EXPECTED: dict[str, dict[str, tuple[tuple[str, ...], bool | None]]] = {
    SERVER_OFFERS: {
        "scene": (("webrtc-offer",), False),
        "hello": (("webrtc-offer", "webrtc-connect"), None),
        "offer": (("webrtc-connect",), True),
        "answer": (("webrtc-connect",), True),
        "open": (("control",), True),
    },
    CLIENT_OFFERS: {
        "offer": (("webrtc-connect",), None),
        "answer": (("webrtc-connect",), True),
        "open": (("control",), True),
    },
}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_client_vanishing_at_each_step_leaves_nothing_open(
    direction: str, ice_guard: guard.Record
) -> None:
    """One child process per handshake step exits abruptly (no close frame, no ICE
    goodbye); the server must close every peer connection it built and get back to
    its baseline of UDP sockets and asyncio tasks."""
    points = VANISH_POINTS[direction]

    async def scenario() -> None:
        ends: dict[str, tuple[str, int | None, bool]] = {}
        flow = echo_server_flow(direction, [])

        @flow.on_close
        def closed(conn: Connection) -> None:
            session = getattr(conn.state, "webrtc", None)
            ends[conn.state.case] = (conn.step, conn.close_code, session is not None)

        def label(request: HandshakeRequest) -> Accept:
            return Accept(state={"case": parse_qs(request.query)["case"][0]})

        udp_before = udp_sockets()
        async with serve(flow, "127.0.0.1", 0, handshake_hook=label) as server:
            tasks_before = len(asyncio.all_tasks())
            procs = [
                await spawn_peer(
                    "vanish",
                    *("--direction", direction, "--at", point),
                    *("--url", f"{server.url}/?case={point}"),
                )
                for point in points
            ]
            try:
                codes = [await asyncio.wait_for(p.wait(), deadline(30)) for p in procs]
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            assert codes == [0] * len(points), "a vanishing client did not reach its step"
            await eventually(
                lambda: len(ends) == len(points) and server.active == 0, 15, "every close"
            )
            await eventually(lambda: not ice_guard.open_peers(), 10, "peer connections closed")
            await eventually(lambda: udp_sockets() == udp_before, 10, "UDP sockets released")
            await eventually(lambda: len(asyncio.all_tasks()) == tasks_before, 10, "tasks finished")
        for point in points:
            step, code, had_session = ends[point]
            want_steps, want_session = EXPECTED[direction][point]
            assert step in want_steps, (point, step)
            assert (point, code) == (point, 1006)
            if want_session is not None:
                assert (point, had_session) == (point, want_session)
        assert len(ice_guard.peers) >= len(points) - 2
        assert udp_sockets() == udp_before

    run(scenario(), 90)


# -- close codes ----------------------------------------------------------------------


def test_close_codes_are_in_the_table() -> None:
    assert webrtc.SIGNALING_ERROR in CLOSE_CODES
    assert webrtc.CHANNEL_TIMEOUT in CLOSE_CODES


async def _offer_sdp(pc: RTCPeerConnection) -> str:
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    return sdp


def test_channel_not_opening_closes_with_4504(ice_guard: guard.Record) -> None:
    """The client offers but never applies the answer: ICE cannot complete, and the
    server's step closes with CHANNEL_TIMEOUT after open_timeout."""

    async def scenario() -> None:
        flow = echo_server_flow(CLIENT_OFFERS, [], open_timeout=0.5)
        async with serve(flow, "127.0.0.1", 0) as server:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                async with websockets.connect(server.url, proxy=None) as ws:
                    await ws.send(webrtc.encode_signal("offer", sdp=await _offer_sdp(pc)))
                    answer = webrtc.parse_signal(await ws.recv())
                    assert answer.type == "answer" and answer.sdp
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(ws.recv(), deadline(10))
            finally:
                await pc.close()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == webrtc.CHANNEL_TIMEOUT
            assert "did not open within 0.5s" in closed.value.rcvd.reason
        assert ice_guard.open_peers() == []

    run(scenario(), 30)


@pytest.mark.parametrize(
    ("direction", "messages", "reason"),
    [
        (CLIENT_OFFERS, [b"\xff\xfe"], "expected UTF-8 JSON"),
        (CLIENT_OFFERS, [b'{"v": 2, "type": "offer", "sdp": "v=0"}'], "unsupported signaling"),
        (CLIENT_OFFERS, [b'{"v": 1, "type": "answer", "sdp": "v=0"}'], "unexpected answer"),
        (CLIENT_OFFERS, [b'{"v": 1, "type": "candidate", "candidate": null}'], "before the"),
        (CLIENT_OFFERS, [b'{"v": 1, "type": "offer"}'], "without a valid 'sdp'"),
        (SERVER_OFFERS, [webrtc.encode_signal("offer", sdp="v=0")], "expected hello"),
        (SERVER_OFFERS, [webrtc.hello(), webrtc.hello()], "unexpected hello"),
    ],
)
def test_bad_signaling_closes_with_4400(
    direction: str, messages: list[bytes], reason: str, ice_guard: guard.Record
) -> None:
    async def scenario() -> None:
        flow = echo_server_flow(direction, [])
        async with (
            serve(flow, "127.0.0.1", 0) as server,
            websockets.connect(server.url, max_size=None, proxy=None) as ws,
        ):
            if direction == SERVER_OFFERS:
                assert await ws.recv() == SCENE
            for message in messages:
                await ws.send(message)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # skip the offer, if any
                    await asyncio.wait_for(ws.recv(), deadline(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == webrtc.SIGNALING_ERROR
        assert reason in closed.value.rcvd.reason
        assert ice_guard.open_peers() == []

    run(scenario(), 30)


def test_trickled_candidates_are_applied_in_the_signaling_step(
    ice_guard: guard.Record,
) -> None:
    """A client that trickles: its offer has no candidates and says so; the server
    stays on webrtc-connect for each candidate message and waits for the channel
    only after end-of-candidates."""

    async def scenario() -> None:
        got: list[bytes] = []
        flow = echo_server_flow(CLIENT_OFFERS, got)
        async with serve(flow, "127.0.0.1", 0) as server:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            welcome = asyncio.Event()
            channel = pc.createDataChannel("trickle")
            channel.on("message", lambda message: welcome.set())
            try:
                async with websockets.connect(server.url, proxy=None) as ws:
                    await pc.setLocalDescription(await pc.createOffer())
                    lines = pc.localDescription.sdp.splitlines()
                    bare = "\r\n".join(
                        x for x in lines if not x.startswith(("a=candidate:", "a=end-of-cand"))
                    )
                    candidates = [x[2:] for x in lines if x.startswith("a=candidate:")]
                    assert candidates, "aiortc gathered no candidate"
                    await ws.send(webrtc.encode_signal("offer", sdp=bare + "\r\n", trickle=True))
                    answer = webrtc.parse_signal(await ws.recv())
                    await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
                    for candidate in candidates:
                        await ws.send(
                            webrtc.encode_signal(
                                "candidate", candidate=candidate, sdpMid="0", sdpMLineIndex=0
                            )
                        )
                    # A non-loopback candidate is dropped in local-only mode.
                    dropped = "candidate:1 1 udp 1 192.0.2.1 9 typ host"
                    await ws.send(webrtc.encode_signal("candidate", candidate=dropped, sdpMid="0"))
                    await ws.send(webrtc.encode_signal("candidate", candidate=None))
                    await asyncio.wait_for(welcome.wait(), deadline(10))
                    channel.send(b"after-trickle")
                    await ws.send(b"done")
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(ws.recv(), deadline(10))
            finally:
                await pc.close()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert got == [b"after-trickle"]
        assert ice_guard.open_peers() == []

    run(scenario(), 30)


# -- event loops ----------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_threaded_driver_runs_the_steps(direction: str, ice_guard: guard.Record) -> None:
    """The threaded driver awaits async handlers on its private asyncio loop, which
    keeps running between messages, so aiortc works there too (channel callbacks run
    on that loop's thread: they send with `threaded.send_threadsafe`)."""
    count = 10
    received: list[bytes] = []
    got: list[bytes] = []
    outcome: list[Any] = []

    def client() -> None:
        with threaded.serve(echo_server_flow(direction, received), "127.0.0.1", 0) as server:
            flow = echo_client_flow(direction, got, count, send=threaded.send_threadsafe)
            outcome.append(threaded.run_client(server.url, flow))

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    worker.join(deadline(30))
    assert not worker.is_alive(), "the threaded client and server did not finish in time"
    assert [(r.code, r.reason) for r in outcome] == [(1000, "flow complete")]
    assert got == [b"welcome"] + [f"echo:ping{i}".encode() for i in range(count)]
    assert received == [f"ping{i}".encode() for i in range(count)]
    assert len(ice_guard.peers) == 2 and ice_guard.open_peers() == []


def test_trio_backend_fails_fast_naming_the_step(caplog: pytest.LogCaptureFixture) -> None:
    """Under anyio's trio backend the first webrtc step raises WebRTCUnsupportedError
    (logged, naming the step) and the connection closes with 1011."""
    server_flow = echo_server_flow(CLIENT_OFFERS, [])
    client = Flow("offer-under-trio")

    @client.on_open
    def offer(conn: Connection) -> None:
        conn.send(webrtc.encode_signal("offer", sdp="v=0\r\n"))

    @client.step
    def wait(conn: Connection, message: bytes) -> Result:
        return False

    async def scenario() -> Any:
        with anyio.fail_after(deadline(20)):
            async with serve(server_flow, "127.0.0.1", 0) as server:
                return await run_client(server.url, client)

    with caplog.at_level(logging.ERROR, logger="socker"):
        result = anyio.run(scenario, backend="trio")
    assert (result.code, result.reason) == (1011, "internal error")
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(e, webrtc.WebRTCUnsupportedError) for e in errors), caplog.text
    assert "webrtc step 'webrtc-connect' needs a running asyncio event loop" in caplog.text
    assert "trio" in caplog.text


# -- the guards themselves ------------------------------------------------------------


@pytest.mark.unguarded
def test_guard_catches_default_ice_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spy every WebRTC test relies on does fail a peer connection built with
    aiortc's defaults (it would contact a public STUN server)."""
    record = guard.install(monkeypatch.setattr)

    async def scenario() -> None:
        pc = webrtc.RTCPeerConnection()  # no configuration: aiortc's default servers
        try:
            with pytest.raises(AssertionError, match="default"):
                pc.createDataChannel("x")
                await pc.setLocalDescription(await pc.createOffer())
        finally:
            await pc.close()

    run(scenario(), 20)
    assert record.problems() == [
        "peer connection built with ICE servers None",
        "aiortc asked for its default ICE servers 1x",
    ]


def test_configuration_without_ice_server_list_is_refused(ice_guard: guard.Record) -> None:
    async def scenario() -> Result:
        offerer = webrtc.Offerer(configuration=lambda: RTCConfiguration())

        class FakeConn:
            state = type("S", (), {})()

            def send(self, data: bytes) -> None:
                raise AssertionError("nothing may be sent")

        with pytest.raises(ValueError, match="public STUN"):
            await offerer.start(FakeConn())  # type: ignore[arg-type]
        return None

    run(scenario(), 10)
    assert ice_guard.peers == []


@pytest.mark.unguarded
def test_local_only_is_scoped_and_nestable() -> None:
    import aioice.ice

    original = aioice.ice.get_host_addresses
    assert not webrtc.is_local_only()
    with webrtc.local_only():
        with webrtc.local_only():
            assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
        assert webrtc.is_local_only()
    assert not webrtc.is_local_only()
    assert aioice.ice.get_host_addresses is original


def test_signal_format_round_trip() -> None:
    message = webrtc.encode_signal(
        "candidate", candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host", sdpMid="0"
    )
    assert json.loads(message) == {
        "v": 1,
        "type": "candidate",
        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
        "sdpMid": "0",
    }
    parsed = webrtc.parse_signal(message)
    assert (parsed.type, parsed.sdp_mid, parsed.sdp_mline_index) == ("candidate", "0", None)
    assert webrtc.parse_signal(webrtc.hello()).type == "hello"
    assert webrtc.is_signal(webrtc.hello()) and not webrtc.is_signal(b"Jyou")
    with pytest.raises(webrtc.SignalingError):
        webrtc.parse_signal(b'{"v": 1, "type": "candidate", "candidate": "x"}')
