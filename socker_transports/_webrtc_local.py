"""`local_only()`: ICE kept on 127.0.0.1 (tests, the demo), and the filter that
drops remote candidates not on loopback while it is on."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import aioice.ice
import aioice.mdns

_LOOPBACK = frozenset({"127.0.0.1", "::1"})

_local_lock = threading.Lock()
_local_depth = 0
_saved: tuple[Any, Any] | None = None


async def _no_mdns() -> Any:
    raise OSError("mDNS resolution is disabled by socker_transports.webrtc.local_only()")


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Keep ICE on 127.0.0.1 while the block runs (process-wide, nestable, reversible).

    Inside it aioice gathers a single host candidate on 127.0.0.1, mDNS
    resolution is disabled, and remote candidates that are not loopback
    addresses (including ``*.local`` names) are dropped. Peer connections
    built inside it must have no ICE servers (`ValueError` otherwise).
    """
    global _local_depth, _saved
    with _local_lock:
        if _local_depth == 0:
            _saved = (aioice.ice.get_host_addresses, aioice.mdns.create_mdns_protocol)
            aioice.ice.get_host_addresses = _loopback_addresses
            aioice.mdns.create_mdns_protocol = _no_mdns
        _local_depth += 1
    try:
        yield
    finally:
        with _local_lock:
            _local_depth -= 1
            if _local_depth == 0 and _saved is not None:
                aioice.ice.get_host_addresses, aioice.mdns.create_mdns_protocol = _saved
                _saved = None


def is_local_only() -> bool:
    """True inside `local_only()`."""
    return _local_depth > 0


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a hostname, e.g. an mDNS "*.local" name


def _filter_sdp(sdp: str) -> str:
    """In local-only mode, drop remote candidates that are not on loopback."""
    if not is_local_only():
        return sdp
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) < 8 or not _is_loopback(bits[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"
