"""WebRTC tests: aiortc in the test process and in child processes, and Chromium.

Everything stays on 127.0.0.1: `webrtc.local_only()` keeps aioice's candidates on
loopback, `guard` fails any test where a peer connection could use a public ICE
server or mDNS, and Chromium runs with the flags from LOOPBACK.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from socker_transports import webrtc

from . import guard


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unguarded: the test installs its own ICE guard")


@pytest.fixture(autouse=True)
def ice_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[guard.Record]:
    if request.node.get_closest_marker("unguarded"):
        yield guard.Record()
        return
    record = guard.install(monkeypatch.setattr)
    with webrtc.local_only():
        yield record
    assert record.problems() == []
