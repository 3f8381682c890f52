"""``socker demo``: the arena game (`socker_transports.arena.run`); ``--classic`` runs
the original single-handshake demo (`socker_transports.classic_demo`)."""

from __future__ import annotations

import sys
from importlib import resources


def static_file(name: str) -> bytes:
    """A file shipped in socker_transports/static (socker.js, the demo pages)."""
    return resources.files("socker_transports").joinpath("static").joinpath(name).read_bytes()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--classic" in args:
        from . import classic_demo

        args.remove("--classic")
        return classic_demo.main(args)
    from .arena import run

    return run.main(args)


if __name__ == "__main__":
    sys.exit(main())
