"""Where a client connects: a ws:// or wss:// URL, parsed once."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def format_host(host: str) -> str:
    """`host` as it appears in a URL or Host header (IPv6 literals bracketed)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """Where a client connects, parsed once from a ws:// or wss:// URL."""

    secure: bool
    host: str
    port: int
    host_header: str
    path: str

    @classmethod
    def parse(cls, url: str) -> ClientTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a websocket URL (ws:// or wss://): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        secure = parts.scheme == "wss"
        default = 443 if secure else 80
        port = parts.port or default
        host = parts.hostname
        host_header = format_host(host) + ("" if port == default else f":{port}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(secure, host, port, host_header, path)
