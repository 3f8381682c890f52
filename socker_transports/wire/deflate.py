"""permessage-deflate (RFC 7692): the handshake's negotiation and the per-message
compression, opt-in with `Options(compression="deflate")`.

Memory per connection (zlib, measured as its documented formulas): a compressor
holds `2 ** (window_bits + 2) + 2 ** (MEM_LEVEL + 9)` bytes (about 64 KiB with
the defaults below: window 12 bits, memLevel 5, websockets' choice) and a
decompressor `2 ** window_bits` plus about 7 KiB (32 KiB + 7 KiB for the peer's
usual 15-bit window). With `*_no_context_takeover` the object for that direction
is made afresh for each message and dropped after it, so an idle connection
holds none for it.

`max_size` is enforced on the decompressed output while it is produced:
`inflate` never asks zlib for more than what is left of `max_size` plus one byte,
so a decompression bomb is refused (1009) after at most `max_size` bytes of
output, whatever its compressed size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from wsproto.utilities import split_comma_header

#: zlib's memLevel for our compressor (1-9; 8 is zlib's default). 5 halves the
#: compressor's memory against 8 for a small loss of ratio on short messages.
MEM_LEVEL = 5
#: The window we ask for our own messages when nothing else is negotiated (9-15).
DEFAULT_WINDOW_BITS = 12
#: Messages shorter than this go out uncompressed (RSV1 clear), as RFC 7692 allows:
#: deflate's framing costs more than it saves on them.
MIN_COMPRESSED_SIZE = 64

_TAIL = b"\x00\x00\xff\xff"
EXTENSION = "permessage-deflate"


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What was agreed, from this side's point of view: `local_*` for the messages
    we compress, `remote_*` for those we decompress."""

    local_no_context_takeover: bool
    remote_no_context_takeover: bool
    local_window_bits: int
    remote_window_bits: int


def _parse_offer(offer: str) -> dict[str, str | None] | None:
    """The parameters of one `permessage-deflate; a; b=1` element, or None when it
    is another extension or its parameters repeat."""
    name, *params = (part.strip() for part in offer.split(";"))
    if name.lower() != EXTENSION:
        return None
    parsed: dict[str, str | None] = {}
    for param in params:
        key, sep, value = param.partition("=")
        key = key.strip().lower()
        if key in parsed:
            return None  # RFC 7692 5: a repeated parameter makes the element invalid
        parsed[key] = value.strip().strip('"') if sep else None
    return parsed


def _window_bits(value: str | None, *, allow_none: bool) -> int | None:
    """A max_window_bits value: 9-15 (8 is refused: zlib cannot write it)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError("max_window_bits needs a value")
    if not value.isdigit() or len(value) > 2 or not 9 <= int(value) <= 15:
        raise ValueError(f"unsupported max_window_bits {value!r}")
    return int(value)


def client_offer(*, server_no_context_takeover: bool, client_no_context_takeover: bool) -> str:
    """The client's Sec-WebSocket-Extensions value."""
    parts = [EXTENSION, "client_max_window_bits"]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    return "; ".join(parts)


def server_accept(
    headers: list[str], *, server_no_context_takeover: bool, client_no_context_takeover: bool
) -> tuple[str, DeflateParams] | None:
    """Choose the first acceptable permessage-deflate offer among the request's
    Sec-WebSocket-Extensions values: (the response's header value, the params), or
    None (no offer we can accept: no compression)."""
    for offer in split_comma_header(", ".join(headers).encode("latin-1")) if headers else []:
        params = _parse_offer(offer)
        if params is None:
            continue
        try:
            if set(params) - {
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
                "client_max_window_bits",
            }:
                raise ValueError("unknown parameter")
            for flag in ("server_no_context_takeover", "client_no_context_takeover"):
                if params.get(flag, None) is not None:
                    raise ValueError(f"{flag} takes no value")
            server_bits = _window_bits(params.get("server_max_window_bits"), allow_none=True)
            if "server_max_window_bits" in params and server_bits is None:
                raise ValueError("server_max_window_bits needs a value")
            client_bits = (
                _window_bits(params["client_max_window_bits"], allow_none=True)
                if "client_max_window_bits" in params
                else None
            )
        except ValueError:
            continue  # RFC 7692 5.1: decline this offer, look at the next
        response = [EXTENSION]
        server_nct = server_no_context_takeover or "server_no_context_takeover" in params
        client_nct = client_no_context_takeover or "client_no_context_takeover" in params
        if server_nct:
            response.append("server_no_context_takeover")
        if client_nct:
            response.append("client_no_context_takeover")
        local_bits = DEFAULT_WINDOW_BITS if server_bits is None else min(server_bits, 15)
        if server_bits is not None:
            response.append(f"server_max_window_bits={local_bits}")
        remote_bits = 15 if client_bits is None else client_bits
        if client_bits is not None:
            response.append(f"client_max_window_bits={client_bits}")
        return "; ".join(response), DeflateParams(server_nct, client_nct, local_bits, remote_bits)
    return None


def client_accepted(values: list[str], *, client_no_context_takeover: bool) -> DeflateParams:
    """Read the server's answer to our offer (ValueError when it is not one we can
    accept: another extension, unknown or repeated parameters)."""
    elements = split_comma_header(", ".join(values).encode("latin-1"))
    if len(elements) != 1:
        raise ValueError(f"unexpected extensions {elements}")
    params = _parse_offer(elements[0])
    if params is None:
        raise ValueError(f"unrecognized extension {elements[0].split(';', 1)[0].strip()}")
    unknown = set(params) - {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
    if unknown:
        raise ValueError(f"unknown permessage-deflate parameters {sorted(unknown)}")
    server_bits = _window_bits(params.get("server_max_window_bits"), allow_none=True)
    if "server_max_window_bits" in params and server_bits is None:
        raise ValueError("server_max_window_bits needs a value")
    client_bits = _window_bits(params.get("client_max_window_bits"), allow_none=True)
    if "client_max_window_bits" in params and client_bits is None:
        raise ValueError("client_max_window_bits needs a value")
    return DeflateParams(
        local_no_context_takeover=client_no_context_takeover
        or "client_no_context_takeover" in params,
        remote_no_context_takeover="server_no_context_takeover" in params,
        local_window_bits=DEFAULT_WINDOW_BITS if client_bits is None else client_bits,
        remote_window_bits=15 if server_bits is None else server_bits,
    )


class Deflate:
    """Compresses our messages and decompresses the peer's, as negotiated."""

    __slots__ = ("_compressor", "_decompressor", "params")

    def __init__(self, params: DeflateParams) -> None:
        self.params = params
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def compress(self, data: bytes) -> bytes | None:
        """One message's payload, compressed (the trailing 00 00 ff ff removed), or
        None when it goes out uncompressed (short messages)."""
        if len(data) < MIN_COMPRESSED_SIZE:
            return None
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.params.local_window_bits, MEM_LEVEL
            )
            if not self.params.local_no_context_takeover:
                self._compressor = compressor
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_TAIL) else out

    def inflate(self, data: bytes, finished: bool, limit: int | None) -> bytes | None:
        """Decompress a piece of a compressed message (`finished`: its last piece);
        at most `limit` bytes of output (None: no limit). None when the output
        would exceed `limit` (1009), ValueError for a corrupt stream (1007)."""
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self.params.remote_window_bits)
        if finished:
            data += _TAIL
        try:
            out = decompressor.decompress(data, 0 if limit is None else limit + 1)
        except zlib.error as exc:
            raise ValueError(f"invalid compressed data: {exc}") from None
        if limit is not None and len(out) > limit:
            return None
        if finished and self.params.remote_no_context_takeover:
            self._decompressor = None
        return out
