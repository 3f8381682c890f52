"""A member's presence info: a small flat mapping of strings, checked once for the
core's rooms and every engine (`socker_core.check_info`: local misuse raises
ValueError/TypeError at `join`, never later)."""

from __future__ import annotations

from collections.abc import Mapping

from socker_core import MAX_INFO_BYTES, check_info
from socker_core._rooms import info_json

__all__ = ["MAX_INFO_BYTES", "encode_info"]


def encode_info(info: Mapping[str, str] | None) -> str:
    """The info as compact, key-sorted JSON; TypeError for non-string keys or values,
    ValueError when it is larger than MAX_INFO_BYTES."""
    return info_json(check_info(info))
