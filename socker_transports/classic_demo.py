"""socker demo --classic: the original README's game scenario, end to end on 127.0.0.1.

``socker demo --classic`` (or ``python -m socker_transports.classic_demo``) starts a server process
and a client process (the anyio driver on asyncio, real loopback sockets):

1. the server sends its buffered scene data as soon as the websocket opens;
2. the client builds the scene and sends the WebRTC handshake (``hello``);
3. the server creates the peer connection and data channel and sends an offer;
4. the client answers; the server sets the remote description;
5. the data channel opens (ICE kept on 127.0.0.1 by `webrtc.local_only()`);
6. game state flows on the data channel both ways (client input, server state)
   while control messages (players joining and leaving, the client leaving) flow
   on the websocket; the server's flow completes and both sides close with 1000.

It prints a live two-column Server | Client table, then a summary, and exits 0
on success. ``--serve`` instead keeps a server running and serves the browser
demo page (``static/index.html`` with ``static/socker.js``) at
``http://127.0.0.1:PORT/``; the page plays the same game in the browser.

Game messages on the websocket are one tag byte and a payload: ``S`` scene
chunk, ``E`` scene end (JSON), ``J`` player joined, ``L`` player left, ``Q`` the
client leaves. On the data channel: ``I`` + 4-byte sequence + input (client),
``G`` + the same sequence + state (server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from socker_core import Close, Connection, Flow, Result
from socker_core._flow import Handler

from .demo import static_file

GAME_PATH = "/game"
DEFAULT_ROUNDS = 500
DEFAULT_SCENE_KIB = 320
CHUNK = 8 * 1024
BOT_JOINS_AT = 50  # the server announces another player at this game input ...
BOT_LEAVES_AT = 150  # ... and its departure at this one
COLUMN = 44

Sink = Callable[[str], None]


@dataclass
class Stats:
    """What one side counted (messages it *received*; the peer's are the other way)."""

    ws_in: int = 0
    ws_in_bytes: int = 0
    dc_in: int = 0
    dc_out: int = 0
    connect_to_open_ms: float | None = None
    round_trips: int = 0
    round_trip_seconds: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    error: str | None = None
    started: float = field(default_factory=time.monotonic)


def _counted(handler: Handler) -> Handler:
    """Wrap a step handler so the side counts every websocket message it receives."""

    def step(conn: Connection, message: bytes) -> Any:
        stats: Stats = conn.state.demo
        stats.ws_in += 1
        stats.ws_in_bytes += len(message)
        return handler(conn, message)

    step.__name__ = getattr(handler, "__name__", "step")
    return step


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _scene(kib: int) -> list[bytes]:
    """Deterministic 'entity' blobs of CHUNK bytes totalling `kib` KiB."""
    total = kib * 1024
    blobs = []
    for index in range(0, total, CHUNK):
        size = min(CHUNK, total - index)
        seed = struct.pack("!I", index // CHUNK)
        blobs.append((seed * (size // 4 + 1))[:size])
    return blobs


# -- the server's flow ----------------------------------------------------------------


def server_flow(
    sink: Sink,
    *,
    scene_kib: int = DEFAULT_SCENE_KIB,
    stats_factory: Callable[[], Stats] = Stats,
    on_closed: Callable[[Stats], None] | None = None,
) -> Flow:
    """The game server: scene on open, server offers, then control on the websocket."""
    from . import webrtc

    flow = Flow("game")
    blobs = _scene(scene_kib)

    @flow.on_open
    def send_scene(conn: Connection) -> None:
        conn.state.demo = stats = stats_factory()
        stats.started = time.monotonic()
        for blob in blobs:
            conn.send(b"S" + blob)
        size = sum(len(b) for b in blobs)
        conn.send(b"E" + json.dumps({"entities": len(blobs), "bytes": size}).encode())
        sink(f"sends buffered scene: {len(blobs)} entities, {_kib(size)}")

    def on_channel(conn: Connection, channel: Any) -> None:
        stats: Stats = conn.state.demo
        stats.connect_to_open_ms = (time.monotonic() - stats.started) * 1000
        sink(f"data channel {channel.label!r} open ({stats.connect_to_open_ms:.0f} ms)")

        def on_message(message: object) -> None:
            if not isinstance(message, bytes) or message[:1] != b"I" or len(message) < 5:
                conn.close(1003, "game input must be binary 'I' messages")
                return
            stats.dc_in += 1
            channel.send(b"G" + message[1:5] + struct.pack("!II", stats.dc_in, len(message)))
            stats.dc_out += 1
            if stats.dc_in == 1:
                sink("data channel: answers game input with state")
            elif stats.dc_in == BOT_JOINS_AT and conn.is_open:
                conn.send(b"Jbot-2")
                sink("control: player 'bot-2' joined (websocket)")
            elif stats.dc_in == BOT_LEAVES_AT and conn.is_open:
                conn.send(b"Lbot-2")
                sink("control: player 'bot-2' left (websocket)")

        channel.on("message", on_message)
        conn.send(b"Jyou")
        sink("control: spawns player 'you' (websocket)")

    rtc = webrtc.Offerer(label="game", on_channel=on_channel, open_timeout=10.0)

    async def webrtc_offer(conn: Connection, message: bytes) -> Result:
        result = await rtc.offer_step(conn, message)
        if result is True:
            sink("gets handshake: creates peer connection + data channel, sends offer")
        return result

    async def webrtc_connect(conn: Connection, message: bytes) -> Result:
        if webrtc.parse_signal(message).type == "answer":
            sink("sets remote description from the client's answer")
        return await rtc.connect_step(conn, message)

    flow.add(_counted(webrtc_offer), name="webrtc-offer", timeout=30.0)
    flow.add(_counted(webrtc_connect), name="webrtc-connect", timeout=30.0)

    @flow.add
    @_counted
    def control(conn: Connection, message: bytes) -> Result:
        if message == b"Q":
            stats: Stats = conn.state.demo
            sink(f"control: player 'you' left after {stats.dc_in} inputs: flow complete")
            return True  # the last step: the connection closes with 1000
        return False

    flow.on_close(rtc.cleanup)

    @flow.on_close
    def closed(conn: Connection) -> None:
        stats = getattr(conn.state, "demo", None)
        if stats is None:
            return
        stats.close_code, stats.close_reason = conn.close_code, conn.close_reason
        sink(f"closed {conn.close_code} {conn.close_reason!r}; peer connection closed")
        if on_closed is not None:
            on_closed(stats)

    return flow


# -- the client's flow ----------------------------------------------------------------


def client_flow(
    sink: Sink, stats: Stats, *, rounds: int = DEFAULT_ROUNDS, patience: float = 5.0
) -> Flow:
    """The game client: scene, handshake, answer, then game state and control."""
    from . import webrtc

    flow = Flow("game")
    scene: list[bytes] = []

    @flow.on_open
    def opened(conn: Connection) -> None:
        conn.state.demo = stats
        sink("connected to the websocket")

    @flow.add
    @_counted
    def load_scene(conn: Connection, message: bytes) -> Result:
        if message[:1] == b"S":
            scene.append(message[1:])
            return False  # stay until the scene is complete
        if message[:1] != b"E":
            return Close(1003, "expected scene data")
        info = json.loads(message[1:])
        if info["entities"] != len(scene) or info["bytes"] != sum(map(len, scene)):
            return Close(1003, "scene data incomplete")
        sink(f"creates scene: {len(scene)} entities from {_kib(info['bytes'])}")
        conn.send(webrtc.hello())
        sink("sends handshake: ready for WebRTC")
        return True

    async def play(conn: Connection, channel: Any) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] | None = None

        def on_message(message: object) -> None:
            stats.dc_in += 1
            if waiter is not None and not waiter.done() and isinstance(message, bytes):
                waiter.set_result(message)

        channel.on("message", on_message)
        marks = {max(1, rounds * q // 4) for q in (1, 2, 3, 4)}
        begin = loop.time()
        try:
            for seq in range(rounds):
                waiter = loop.create_future()
                channel.send(b"I" + struct.pack("!I", seq) + b"move:+1,+0;fire:0")
                stats.dc_out += 1
                reply = await asyncio.wait_for(waiter, patience)
                if reply[:5] != b"G" + struct.pack("!I", seq):
                    raise RuntimeError(f"round trip {seq}: unexpected reply {reply[:9]!r}")
                stats.round_trips = seq + 1
                if seq + 1 in marks:
                    sink(f"data channel: {seq + 1}/{rounds} game-state round trips")
            stats.round_trip_seconds = loop.time() - begin
            conn.send(b"Q")
            sink("control: leaves the game (websocket)")
        except Exception as exc:  # report, then end the connection
            stats.error = f"{type(exc).__name__}: {exc}"
            conn.close(1011, "game loop failed")

    def on_channel(conn: Connection, channel: Any) -> None:
        stats.connect_to_open_ms = (time.monotonic() - stats.started) * 1000
        sink(f"data channel {channel.label!r} open ({stats.connect_to_open_ms:.0f} ms)")
        conn.state.game = asyncio.get_running_loop().create_task(play(conn, channel))

    rtc = webrtc.Answerer(on_channel=on_channel, open_timeout=10.0)

    async def webrtc_connect(conn: Connection, message: bytes) -> Result:
        if webrtc.parse_signal(message).type == "offer":
            sink("gets offer: sets remote description, sends answer")
        return await rtc.connect_step(conn, message)

    flow.add(_counted(webrtc_connect), name="webrtc-connect", timeout=30.0)

    @flow.add
    @_counted
    def control(conn: Connection, message: bytes) -> Result:
        tag, name = message[:1], message[1:].decode("utf-8", "replace")
        if tag == b"J":
            sink(f"control: player {name!r} joined")
        elif tag == b"L":
            sink(f"control: player {name!r} left")
        return False

    flow.on_close(rtc.cleanup)

    @flow.on_close
    async def closed(conn: Connection) -> None:
        game = getattr(conn.state, "game", None)
        if game is not None:
            game.cancel()
            with contextlib.suppress(BaseException):
                await game
        stats.close_code, stats.close_reason = conn.close_code, conn.close_reason
        sink(f"closed {conn.close_code} {conn.close_reason!r}; peer connection closed")

    return flow


# -- child processes (internal: --role server / client) -------------------------------


def _emitter(side: str, out: IO[str]) -> Callable[[dict[str, Any]], None]:
    lock = threading.Lock()

    def emit(record: dict[str, Any]) -> None:
        record = {"t": time.monotonic(), "side": side, **record}
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    return emit


async def _server_child(scene_kib: int, timeout: float) -> int:
    import anyio

    from . import webrtc
    from .anyio import serve

    emit = _emitter("server", sys.stdout)
    done = anyio.Event()
    results: list[Stats] = []

    def finished(stats: Stats) -> None:
        results.append(stats)
        done.set()

    flow = server_flow(lambda text: emit({"text": text}), scene_kib=scene_kib, on_closed=finished)
    with webrtc.local_only(), anyio.move_on_after(timeout):
        async with serve({GAME_PATH: flow}, "127.0.0.1", 0) as server:
            emit({"text": f"websocket server listening on {server.url}{GAME_PATH}"})
            emit({"listening": server.url + GAME_PATH})
            await done.wait()
    if not results:
        emit({"summary": None, "error": "no game connection finished in time"})
        return 1
    stats = results[0]
    emit({"summary": asdict(stats)})
    return 0 if stats.close_code == 1000 and stats.error is None else 1


async def _client_child(url: str, rounds: int, timeout: float, patience: float) -> int:
    import anyio

    from . import webrtc
    from .anyio import run_client

    emit = _emitter("client", sys.stdout)
    stats = Stats()
    flow = client_flow(lambda text: emit({"text": text}), stats, rounds=rounds, patience=patience)
    with webrtc.local_only():
        stats.started = time.monotonic()
        with anyio.move_on_after(timeout):
            result = await run_client(url, flow)
    emit({"summary": asdict(stats)})
    ok = (
        result is not None
        and result.code == 1000
        and stats.error is None
        and stats.round_trips == rounds
    )
    return 0 if ok else 1


# -- the orchestrating parent ---------------------------------------------------------


def _spawn(
    args: list[str], lines: queue.Queue[tuple[str, Any]], side: str
) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "socker_transports.classic_demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def pump(stream: IO[str], kind: str) -> None:
        for line in stream:
            lines.put((kind, line.rstrip("\n")))
        lines.put((kind, None))

    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=pump, args=(proc.stdout, side), daemon=True).start()
    threading.Thread(target=pump, args=(proc.stderr, f"{side}-stderr"), daemon=True).start()
    return proc


class _Table:
    """Prints Server | Client rows in time order (a short reorder window)."""

    WINDOW = 0.08

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.held: list[dict[str, Any]] = []

    def header(self) -> None:
        self.out.write(f"{'Server':<{COLUMN}} | Client\n{'-' * COLUMN}-+-{'-' * COLUMN}\n")
        self.out.flush()

    def add(self, record: dict[str, Any]) -> None:
        self.held.append(record)

    def flush(self, everything: bool = False) -> None:
        self.held.sort(key=lambda r: r["t"])
        limit = time.monotonic() - self.WINDOW
        while self.held and (everything or self.held[0]["t"] <= limit):
            record = self.held.pop(0)
            for part in textwrap.wrap(record["text"], COLUMN, subsequent_indent="  "):
                if record["side"] == "server":
                    row = f"{part:<{COLUMN}} |"
                else:
                    row = f"{'':<{COLUMN}} | {part}"
                self.out.write(row.rstrip() + "\n")
        self.out.flush()


def _summary(server: dict[str, Any], client: dict[str, Any], out: IO[str]) -> None:
    def line(label: str, value: str) -> None:
        out.write(f"  {label:<34} {value}\n")

    out.write("\nSummary\n")
    line(
        "websocket connect -> channel open",
        f"{client['connect_to_open_ms']:.1f} ms (client); "
        f"{server['connect_to_open_ms']:.1f} ms after the server's open",
    )
    seconds = client["round_trip_seconds"]
    rate = client["round_trips"] / seconds if seconds else 0.0
    line(
        "data channel round trips",
        f"{client['round_trips']} in {seconds:.3f} s = {rate:.0f} round trips/s",
    )
    line(
        "data channel messages",
        f"client -> server {server['dc_in']}, server -> client {client['dc_in']}",
    )
    line(
        "websocket messages",
        f"server -> client {client['ws_in']} ({_kib(client['ws_in_bytes'])}), "
        f"client -> server {server['ws_in']} ({_kib(server['ws_in_bytes'])})",
    )
    line(
        "close",
        f"server {server['close_code']} {server['close_reason']!r}, "
        f"client {client['close_code']} {client['close_reason']!r}",
    )
    out.flush()


def _run_demo(
    rounds: int, scene_kib: int, timeout: float, out: IO[str], patience: float = 5.0
) -> int:
    lines: queue.Queue[tuple[str, Any]] = queue.Queue()
    common = ["--timeout", str(timeout), "--patience", str(patience)]
    procs = [_spawn(["--role", "server", "--scene-kib", str(scene_kib), *common], lines, "server")]
    table = _Table(out)
    summaries: dict[str, Any] = {}
    errors: list[str] = []
    open_streams = 2
    deadline = time.monotonic() + timeout + 5.0
    out.write(f"socker demo: the game handshake on 127.0.0.1 ({rounds} round trips)\n\n")
    table.header()
    try:
        while open_streams and time.monotonic() < deadline:
            try:
                kind, line = lines.get(timeout=0.03)
            except queue.Empty:
                table.flush()
                continue
            if line is None:
                open_streams -= 1
                continue
            if kind.endswith("-stderr"):
                errors.append(f"{kind}: {line}")
                continue
            record = json.loads(line)
            if "listening" in record:
                client_args = ["--role", "client", "--url", record["listening"]]
                procs.append(
                    _spawn([*client_args, "--rounds", str(rounds), *common], lines, "client")
                )
                open_streams += 2
            elif "summary" in record:
                summaries[record["side"]] = record["summary"]
            elif "text" in record:
                table.add(record)
            table.flush()
        table.flush(everything=True)
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(-1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    server, client = summaries.get("server"), summaries.get("client")
    if len(procs) == 2 and server and client and codes == [0, 0]:
        _summary(server, client, out)
        out.write("\ndemo OK\n")
        return 0
    out.write(f"\ndemo FAILED (exit codes {codes})\n")
    for text in errors[-30:]:
        out.write(text + "\n")
    return 1


# -- --serve: the browser page --------------------------------------------------------


_CONTENT_TYPES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/socker.js": ("socker.js", "text/javascript; charset=utf-8"),
}


def http_handler(request: Any) -> Any:
    """Serves the demo page and socker.js for plain HTTP GETs (`serve(http_handler=)`)."""
    from .wire import HttpResponse

    found = _CONTENT_TYPES.get(request.path)
    if found is None:
        return HttpResponse(404, b"not found\n")
    name, content_type = found
    return HttpResponse(200, static_file(name), content_type)


async def _serve(host: str, port: int, scene_kib: int, ready: Callable[[str], None]) -> None:
    import anyio

    from . import webrtc
    from .anyio import serve

    def sink(text: str) -> None:
        print(f"[server] {text}", flush=True)

    flow = server_flow(sink, scene_kib=scene_kib)
    with webrtc.local_only():
        async with (
            serve({GAME_PATH: flow}, host, port, http_handler=http_handler) as server,
            anyio.create_task_group() as tasks,
        ):
            # SIGINT and SIGTERM close the server gracefully (clients see 1001), as
            # `socker serve` does.
            await tasks.start(_close_on_signal, server)
            ready(f"http://{host}:{server.port}/")
            await server.serve_forever()
            tasks.cancel_scope.cancel()
    print("socker demo: server stopped", flush=True)


async def _close_on_signal(server: Any, *, task_status: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            server.close()


def _serve_main(host: str, port: int, scene_kib: int) -> int:
    def ready(url: str) -> None:
        print(f"socker demo page: {url}  (websocket {GAME_PATH}; Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, scene_kib, ready))
    return 0


# -- entry point ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``socker demo --classic``: run the game scenario end to end; ``--serve`` for the browser."""
    from .cli import OneLineErrorParser, missing_extra

    parser = OneLineErrorParser(
        prog="socker demo --classic",
        description="The original socker README's game scenario, end to end on 127.0.0.1.",
    )
    parser.add_argument("--serve", action="store_true", help="serve the browser demo page")
    parser.add_argument("--port", type=int, default=8765, help="--serve port (0: any free port)")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="data channel round trips"
    )
    parser.add_argument("--scene-kib", type=int, default=DEFAULT_SCENE_KIB, help="scene data size")
    parser.add_argument("--timeout", type=float, default=60.0, help="overall bound in seconds")
    parser.add_argument(
        "--patience", type=float, default=5.0, help="seconds to wait for each data channel reply"
    )
    parser.add_argument("--role", choices=["server", "client"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = missing_extra("aiortc")
    if problem is not None:  # before any child process could fail on it
        print(f"socker demo: error: {problem}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.scene_kib < 1:
        parser.error("--rounds and --scene-kib must be positive")
    if not args.patience > 0:  # also refuses nan
        parser.error("--patience must be positive seconds")
    if args.role == "server":
        return asyncio.run(_server_child(args.scene_kib, args.timeout))
    if args.role == "client":
        return asyncio.run(_client_child(args.url, args.rounds, args.timeout, args.patience))
    if args.serve:
        return _serve_main("127.0.0.1", args.port, args.scene_kib)
    return _run_demo(args.rounds, args.scene_kib, args.timeout, sys.stdout, args.patience)


if __name__ == "__main__":
    sys.exit(main())
