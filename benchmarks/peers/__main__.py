"""`python -m benchmarks.peers NAME [--port 0] [--lifetime S] [--profile FILE]`

Starts one echo server in this process, prints `PORT <n>` once listening, and
serves until `lifetime` elapses, stdin reaches end of file (the parent is gone)
or SIGTERM. Raises RLIMIT_NOFILE to its hard limit first, for the idle-memory
scenario.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import signal
import sys
import threading
from types import FrameType

from . import ALL


def _watch_stdin() -> None:
    try:
        while sys.stdin.buffer.read(1):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("name", choices=sorted(ALL))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("--profile", default="", help="write cProfile stats here on exit")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    threading.Thread(target=_watch_stdin, daemon=True).start()

    module = importlib.import_module(f"{__package__}.{ALL[args.name]}")

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    def serve() -> None:
        if args.name.startswith("socker-anyio-"):
            module.serve(args.port, ready, args.lifetime, backend=args.name.rsplit("-", 1)[1])
        elif args.name.startswith("proto-wire-"):
            module.serve(args.port, ready, args.lifetime, variant=args.name)
        else:
            module.serve(args.port, ready, args.lifetime)

    if not args.profile:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        serve()
        return 0

    import cProfile

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        serve()
    except KeyboardInterrupt:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
