"""Spies that make every WebRTC test fail if aiortc could leave loopback.

`install()` (used by the conftest for the test process and by `peer.py` in child
processes) records every RTCPeerConnection's configuration, makes aiortc's
default-ICE-server path raise, and records any mDNS use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aiortc.rtcicetransport

from socker_transports import webrtc


@dataclass
class Record:
    configurations: list[Any] = field(default_factory=list)
    default_ice_requests: int = 0
    mdns_requests: int = 0
    peers: list[Any] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        for config in self.configurations:
            if config is None or config.iceServers != []:
                found.append(f"peer connection built with ICE servers {config!r}")
        if self.default_ice_requests:
            found.append(f"aiortc asked for its default ICE servers {self.default_ice_requests}x")
        if self.mdns_requests:
            found.append(f"aioice tried mDNS {self.mdns_requests}x")
        return found

    def open_peers(self) -> list[Any]:
        return [pc for pc in self.peers if pc.connectionState != "closed"]


def install(patch: Any) -> Record:
    """Install the spies with `patch(target, name, value)` (monkeypatch.setattr or setattr)."""
    record = Record()
    real_pc = webrtc.RTCPeerConnection

    def spy_pc(configuration: Any = None) -> Any:
        record.configurations.append(configuration)
        pc = real_pc(configuration=configuration)
        record.peers.append(pc)
        return pc

    def no_default_servers(self: Any) -> Any:
        record.default_ice_requests += 1
        raise AssertionError("aiortc tried to use its default (public) ICE servers")

    async def no_mdns(subscriber: object) -> Any:
        record.mdns_requests += 1
        raise OSError("mDNS is not allowed in the tests")

    patch(webrtc, "RTCPeerConnection", spy_pc)
    patch(aiortc.rtcicetransport.RTCIceGatherer, "getDefaultIceServers", no_default_servers)
    patch(aioice.ice, "get_or_create_mdns_protocol", no_mdns)
    return record
