"""A member's presence info: a small flat mapping of strings, checked once for both
engines (local misuse raises ValueError/TypeError at `join`, never later)."""

from __future__ import annotations

import json
from collections.abc import Mapping

#: The largest info a member may carry, as compact JSON. Presence is read whole by
#: every `presence()` call on every worker: it must stay small.
MAX_INFO_BYTES = 1024


def encode_info(info: Mapping[str, str] | None) -> str:
    """The info as compact, key-sorted JSON; TypeError for non-string keys or values,
    ValueError when it is larger than MAX_INFO_BYTES."""
    if info is None:
        return "{}"
    for key, value in info.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"presence info maps str to str, got {key!r}: {value!r}")
    encoded = json.dumps(dict(info), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if len(encoded.encode()) > MAX_INFO_BYTES:
        raise ValueError(f"presence info is {len(encoded.encode())} bytes, over {MAX_INFO_BYTES}")
    return encoded
