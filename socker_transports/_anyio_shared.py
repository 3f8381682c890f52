"""What the anyio Server and Client share: the "socker" logger, the shutdown
fallback bound, and which backend runs (asyncio takes the Protocol fast path)."""

from __future__ import annotations

import logging

_SOCKER_LOGGER = logging.getLogger("socker")

#: Bound (seconds) on a graceful shutdown when close_timeout is None.
_SHUTDOWN_FALLBACK = 10.0


def _on_asyncio() -> bool:
    """True when the running anyio backend is asyncio (uvloop included)."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - anyio without sniffio runs asyncio only
        return True
    try:
        return bool(sniffio.current_async_library() == "asyncio")
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover
        return False
