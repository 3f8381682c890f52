"""The cluster publication envelope: the members a broadcast skips travel with it."""

from __future__ import annotations

import pytest

from socker_transports.engine.cluster import decode_publication, encode_publication


def test_the_rooms_envelope_carries_the_skipped_members() -> None:
    assert decode_publication(encode_publication(b"data")) == (frozenset(), b"data")
    blob = encode_publication(b"\x00\x01payload", ["node-1/c1", "node-2/c9"])
    assert decode_publication(blob) == (frozenset({"node-1/c1", "node-2/c9"}), b"\x00\x01payload")
    for bad in (b"", b"\x02junk", blob[:5], b"\x01\x00\x01\x00\x09ab"):
        with pytest.raises(ValueError):
            decode_publication(bad)
