"""`socker demo`: the arena server and bot players as separate processes on 127.0.0.1.

``socker demo`` (what ``make demo`` runs) starts the server process, then
``--bots`` bot processes; the first bot's websocket is cut after 40 % of its
play time and resumes. The terminal shows the live view (`view.LiveView`); the
run is bounded (``--timeout``, 55 s by default) and exits 0 only if every check
held. ``socker demo --serve`` runs the server in this process with the browser
page at ``http://127.0.0.1:PORT/`` (each tab is a player) and ``--bots N`` bot
processes beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from ..demo import static_file
from .server import MATCH, PATH, Match
from .view import LiveView

Report = Callable[[dict[str, Any]], None]

_PAGES = {
    "/": ("arena.html", "text/html; charset=utf-8"),
    "/index.html": ("arena.html", "text/html; charset=utf-8"),
    "/arena.js": ("arena.js", "text/javascript; charset=utf-8"),
    "/socker.js": ("socker.js", "text/javascript; charset=utf-8"),
}


def http_handler(request: Any) -> Any:
    """The arena page, its script and socker.js for plain HTTP GETs."""
    from ..wire import HttpResponse

    found = _PAGES.get(request.path)
    if found is None:
        return HttpResponse(404, b"not found\n")
    name, content_type = found
    return HttpResponse(200, static_file(name), content_type)


async def serve_arena(
    report: Report,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[Any], None],
    finished: Callable[[Match], bool] = lambda match: False,
    seed: int = 0,
) -> Match:
    """Run the arena server until `finished(match)` (polled) is true."""
    from .. import webrtc
    from ..anyio import serve

    match = Match(seed=seed, report=report)
    with webrtc.local_only():
        async with serve({PATH: match.flow()}, host, port, http_handler=http_handler) as server:
            ticker = asyncio.get_running_loop().create_task(match.run())
            try:
                ready(server)
                while not finished(match):
                    await asyncio.sleep(0.1)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
    return match


def _json_lines(who: str, out: IO[str]) -> Report:
    lock = threading.Lock()

    def report(record: dict[str, Any]) -> None:
        line = json.dumps({"t": time.monotonic(), "who": who, **record})
        with lock:
            out.write(line + "\n")
            out.flush()

    return report


async def _server_child(players: int) -> int:
    report = _json_lines("server", sys.stdout)
    joined: set[str] = set()

    def tally(record: dict[str, Any]) -> None:
        if record.get("ev") == "joined":
            joined.add(record["id"])
        report(record)

    def ready(server: Any) -> None:
        report({"ev": "listening", "url": server.url + PATH, "room": MATCH})

    await serve_arena(
        tally, ready=ready, finished=lambda m: len(joined) >= players and not m.members
    )
    return 0


def bot_command(url: str, name: str, seconds: float, cut_at: Sequence[float] = ()) -> list[str]:
    command = [sys.executable, "-m", "socker_transports.arena.bots", url, "--name", name]
    command += ["--seconds", str(seconds)]
    for at in cut_at:
        command += ["--cut-at", f"{at:.3f}"]
    return command


def cut_times(seconds: float, cuts: int) -> list[float]:
    """When the cut bot drops its websocket: 40 % into play for one cut, else spread
    over 30-80 % of its play time."""
    if cuts <= 1:
        return [seconds * 0.4] if cuts == 1 else []
    return [seconds * (0.3 + 0.5 * i / (cuts - 1)) for i in range(cuts)]


def _spawn(
    command: list[str], lines: queue.Queue[tuple[str, str | None]], tag: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )

    def pump(stream: IO[str], kind: str) -> None:
        for line in stream:
            lines.put((kind, line.rstrip("\n")))
        lines.put((kind, None))

    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=pump, args=(proc.stdout, tag), daemon=True).start()
    threading.Thread(target=pump, args=(proc.stderr, f"{tag}!"), daemon=True).start()
    return proc


class _Screen:
    """Events scroll; on a terminal the status block stays at the bottom, redrawn in
    place, elsewhere (a pipe, a test) it is printed once per second."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.live = out.isatty()
        self.block: list[str] = []

    def show(self, events: list[str], status: list[str] | None) -> None:
        if not events and status is None:
            return
        if self.live and self.block:
            self.out.write(f"\x1b[{len(self.block)}F\x1b[J")  # up to the block, clear below
        for line in events:
            self.out.write(line + "\n")
        if status is not None:
            self.block = status
            if not self.live:
                for line in status:
                    self.out.write(line + "\n")
        if self.live:
            for line in self.block:
                self.out.write(line + "\n")
        self.out.flush()


def run_demo(bots: int, seconds: float, timeout: float, cuts: int, out: IO[str]) -> int:
    """The whole `make demo`: processes, live view, summary; 0 when every check held."""
    names = [f"bot-{i}" for i in range(1, bots + 1)]
    cut_bot = names[0] if cuts else None
    view = LiveView(names, cut_bot)
    screen = _Screen(out)
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    server_cmd = [sys.executable, "-m", "socker_transports.arena.run", "--role", "server"]
    procs = [_spawn([*server_cmd, "--players", str(bots)], lines, "server")]
    streams = 2
    deadline = time.monotonic() + timeout
    times = "" if cuts == 1 else f" {cuts} times"
    cutting = f"; {cut_bot} gets its websocket cut{times}" if cut_bot else ""
    out.write(
        f"socker demo: the arena, {bots} bot players in their own processes on 127.0.0.1, "
        f"{seconds:g} s of play{cutting}\n\n"
    )
    try:
        while streams and time.monotonic() < deadline:
            try:
                kind, line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                streams -= 1
                continue
            if kind.endswith("!"):
                view.errors.append(f"{kind[:-1]}: {line}")
                continue
            try:
                record = json.loads(line)
            except ValueError:
                view.errors.append(f"{kind}: {line}")
                continue
            events = view.add(record)
            fresh = record.get("who") == "server" and record.get("ev") == "second"
            screen.show(events, view.status() if fresh else None)
            if record.get("ev") == "listening":
                for name in names:
                    cut_at = cut_times(seconds, cuts) if name == cut_bot else []
                    procs.append(
                        _spawn(bot_command(record["url"], name, seconds, cut_at), lines, name)
                    )
                    streams += 2
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(-1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if time.monotonic() >= deadline:
        view.errors.append(f"the demo did not finish within {timeout:g} s")
    screen.show([], [])
    summary, ok = view.summary()
    for text in summary:
        out.write(text + "\n")
    out.flush()
    return 0 if ok and all(code == 0 for code in codes) else 1


def serve_main(port: int, bots: int, bot_seconds: float) -> int:
    """``socker demo --serve``: the page for browser players, plus `bots` bot processes."""
    procs: list[subprocess.Popen[bytes]] = []

    def report(record: dict[str, Any]) -> None:
        ev = record.get("ev")
        if ev == "second":
            if not record["players"]:
                return
            print(
                f"[server] ticks {record['ticks']:.1f}/s, players {record['players']}", flush=True
            )
        else:
            fields = {k: v for k, v in record.items() if k not in ("ev", "t")}
            print(f"[server] {ev} {fields}", flush=True)

    stop = False

    def stopping() -> None:
        nonlocal stop
        stop = True

    def ready(server: Any) -> None:
        # SIGINT and SIGTERM end the match gracefully (players see 1001), as `socker serve`.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping)
        print(f"socker demo page: http://127.0.0.1:{server.port}/  (Ctrl-C stops)", flush=True)
        url = server.url + PATH
        for i in range(1, bots + 1):
            procs.append(
                subprocess.Popen(
                    bot_command(url, f"bot-{i}", bot_seconds), stdout=subprocess.DEVNULL
                )
            )

    try:
        asyncio.run(serve_arena(report, port=port, ready=ready, finished=lambda m: stop))
        print("socker demo: server stopped", flush=True)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import OneLineErrorParser, missing_extra

    parser = OneLineErrorParser(
        prog="socker demo",
        description="The arena: a small multiplayer game on socker (rooms, WebRTC data "
        "channels, resume) on 127.0.0.1. --classic runs the original single-handshake demo.",
    )
    parser.add_argument(
        "--classic", action="store_true", help="the original single-handshake demo instead"
    )
    parser.add_argument("--serve", action="store_true", help="serve the browser page")
    parser.add_argument("--port", type=int, default=8765, help="--serve port (0: any free port)")
    parser.add_argument(
        "--bots", type=int, default=None, help="bot players (default 4; --serve: 0)"
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="each bot's play time")
    parser.add_argument("--timeout", type=float, default=55.0, help="overall bound in seconds")
    parser.add_argument(
        "--no-cut", action="store_true", help="do not cut the first bot's websocket"
    )
    parser.add_argument("--cuts", type=int, default=1, help="how often bot-1's websocket is cut")
    parser.add_argument("--role", choices=["server"], help=argparse.SUPPRESS)
    parser.add_argument("--players", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = missing_extra("aiortc")
    if problem is not None:  # before any child process could fail on it
        print(f"socker demo: error: {problem}", file=sys.stderr)
        return 2
    if args.role == "server":
        return asyncio.run(_server_child(args.players))
    if args.serve:
        return serve_main(
            args.port, args.bots or 0, 3600.0 if args.seconds == 12.0 else args.seconds
        )
    bots = 4 if args.bots is None else args.bots
    if bots < 2 or args.seconds <= 0:
        parser.error("--bots must be at least 2 (they must see each other) and --seconds positive")
    return run_demo(bots, args.seconds, args.timeout, 0 if args.no_cut else args.cuts, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
