"""A live RTCPeerConnection cannot move between processes: the WebRTC steps keep it
out of session snapshots (cross-worker resume), `peer_lost` tells a restored session
it must renegotiate, and on a server with an engine the peer connection is closed
when the session detaches (it moves to the store)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("aiortc")

from socker_core import (
    Flow,
    Goto,
    OutgoingLedger,
    ReplayBuffer,
    ResumePlan,
    SessionSnapshot,
    Stepper,
)
from socker_transports import webrtc


def test_the_peer_connection_stays_out_of_a_snapshot_and_a_restored_session_renegotiates() -> None:
    flow = Flow("game", resume_window=30.0)
    webrtc.server_answers(flow)
    flow.add(lambda conn, m: False, name="control")

    @flow.on_resume
    def renegotiate(conn):  # type: ignore[no-untyped-def]
        if webrtc.peer_lost(conn):
            return Goto("webrtc-connect")
        return None

    stepper = Stepper(flow, replay=ReplayBuffer(ledger=OutgoingLedger()))
    stepper.open(0.0)
    stepper.conn.state.webrtc = object()  # what aiortc's session would be: not JSON
    stepper.conn.state.webrtc_started = True
    stepper.conn.state.score = 7
    stepper._place("control", None, 0.0)  # signaling done, playing
    snapshot = SessionSnapshot.from_bytes(stepper.snapshot(0.0).to_bytes())
    restored = Stepper.restore(flow, snapshot, 1.0, plan=ResumePlan(0, (), {}))
    assert restored.conn.state.score == 7 and not hasattr(restored.conn.state, "webrtc")
    assert webrtc.peer_lost(restored.conn)
    restored.attach(1.0)
    assert restored.step == "webrtc-connect"  # back to signaling: a new offer is awaited
    assert not webrtc.peer_lost(SimpleNamespace(state=SimpleNamespace()))  # type: ignore[arg-type]
