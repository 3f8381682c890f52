"""Headless Chromium: socker.js notices a silent drop by the server's heartbeat.

A browser cannot see pings. The test cuts the websocket silently (a loopback proxy
keeps both TCP connections open and drops what comes, as a phone moving from wifi
to cellular leaves a dead socket): neither TCP stack notices, so only socker.js's
heartbeat watchdog (no frame for 2 * heartbeat + 1 seconds) can bring the page
back. The page must detach, reconnect and resume, with every control message
seen once, in order. And a live but quiet connection is never taken for dead:
the server's acks at every ping keep the watchdog fed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from socker_core import Connection, Flow, Result
from socker_transports import demo
from socker_transports.anyio import serve
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.timing import deadline
from tests.transports.cutproxy import CutProxy

from . import chromium
from .test_browser import _until, open_page
from .test_webrtc import run

CONTROL = 20
CUT_AT = 5
#: The server's ping_interval (the heartbeat it announces) and ping_timeout.
HEARTBEAT = deadline(0.5)
#: socker.js's rule: no frame for this long is a dead websocket.
WATCHDOG = 2 * HEARTBEAT + 1

PAGE = """
(async () => {
  const { Flow, connect } = await import("/socker.js");
  const enc = (s) => new TextEncoder().encode(s);
  const dec = (m) => new TextDecoder().decode(m);
  const flow = new Flow("heartbeat");
  const acks = [];
  const out = { detaches: 0, resumes: 0, lastAck: 0, detachedAt: 0, resumedAt: 0 };
  flow.onDetach(() => { out.detaches += 1; out.detachedAt = performance.now(); });
  flow.onResume(() => { out.resumes += 1; out.resumedAt = performance.now(); });
  flow.onOpen((conn) => {
    let k = 0;
    const control = setInterval(() => {
      if (k >= %(control)d) { clearInterval(control); return; }
      conn.send(enc("ctl:" + k++));  // kept for replay while detached
    }, 20);
  });
  flow.add((conn, m) => {
    acks.push(dec(m));
    if (!conn.detached && out.detaches === 0) out.lastAck = performance.now();
    if (acks.length === %(control)d) conn.send(enc("bye"));
    return false;
  }, { name: "control" });
  const conn = connect("ws://127.0.0.1:%(port)d/flow", flow, { reconnect: true });
  out.result = await conn.closed;
  out.acks = acks;
  out.reconnects = conn.reconnects;
  return out;
})()
"""

QUIET_PAGE = """
(async () => {
  const { Flow, connect } = await import("/socker.js");
  const flow = new Flow("quiet");
  const out = { detaches: 0 };
  flow.onDetach(() => { out.detaches += 1; });
  // Silent for two watchdog periods: only the server's acks come.
  flow.onOpen((conn) => {
    setTimeout(() => conn.send(new TextEncoder().encode("bye")), %(quiet_ms)d);
  });
  flow.add(() => false, { name: "wait" });
  const conn = connect("ws://127.0.0.1:%(port)d/quiet", flow, { reconnect: true });
  out.result = await conn.closed;
  out.reconnects = conn.reconnects;
  return out;
})()
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[chromium.Browser]:
    with chromium.launch(deadline(20)) as running:
        yield running


def _pages(request: HandshakeRequest) -> HttpResponse | None:
    if request.path == "/socker.js":
        return HttpResponse(200, demo.static_file("socker.js"), "text/javascript")
    return HttpResponse(200, b"<!doctype html><title>socker</title>", "text/html")


def test_socker_js_resumes_after_a_silent_drop(browser: chromium.Browser) -> None:
    control: list[str] = []
    detaches: list[str] = []
    closes: list[int | None] = []
    proxies: list[CutProxy] = []
    flow = Flow("heartbeat", resume_window=deadline(20.0))

    @flow.step
    def control_step(conn: Connection, message: bytes) -> Result:
        text = message.decode()
        if text == "bye":
            return True  # past the last step: 1000
        control.append(text)
        if text == f"ctl:{CUT_AT}":
            proxies[0].cut("silent")  # its ack, and all that follows, is lost
        conn.send(f"ack:{text}".encode())
        return False

    flow.on_detach(lambda conn: detaches.append(conn.step))
    flow.on_close(lambda conn: closes.append(conn.close_code))

    async def scenario() -> Any:
        async with serve(
            {"/flow": flow},
            "127.0.0.1",
            0,
            http_handler=_pages,
            ping_interval=HEARTBEAT,
            ping_timeout=HEARTBEAT,
        ) as server:
            proxy = CutProxy(server.port)
            proxies.append(proxy)
            try:

                async def play(page: chromium.Page) -> Any:
                    script = PAGE % {"control": CONTROL, "port": proxy.port}
                    return await asyncio.wait_for(page.evaluate(script), deadline(WATCHDOG + 15))

                outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
                await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            finally:
                await asyncio.to_thread(proxy.stop)
            return outcome, proxy

    out, proxy = run(scenario(), 90)
    expected = [f"ctl:{k}" for k in range(CONTROL)]
    assert out["result"]["code"] == 1000, out
    assert out["acks"] == [f"ack:{m}" for m in expected]  # each once, in order
    assert control == expected
    assert out["detaches"] == out["resumes"] == out["reconnects"] == 1, out
    assert proxy.cuts == 1 and proxy.connections == 2
    # The server detached too (its pings went unanswered), or the resume took the
    # half-open session over: either way once, and the session ended once.
    assert detaches == ["control_step"] and closes == [1000]
    # The watchdog's rule: the page gave up on the websocket no sooner than
    # 2 * heartbeat + 1 s after the last frame (setTimeout never fires early; 50 ms
    # for the clock's rounding), and within a generous bound after.
    silence = (out["detachedAt"] - out["lastAck"]) / 1000
    assert WATCHDOG - 0.05 <= silence <= WATCHDOG + deadline(5.0), out
    assert 0 < (out["resumedAt"] - out["detachedAt"]) / 1000 <= deadline(5.0), out


def test_a_quiet_live_connection_is_not_taken_for_dead(browser: chromium.Browser) -> None:
    """No application message for two watchdog periods: the server's acks at every
    ping are frames the page sees, so it never detaches."""
    flow = Flow("quiet", resume_window=deadline(20.0))
    flow.add(lambda conn, message: message == b"bye", name="wait")
    detaches: list[str] = []
    flow.on_detach(lambda conn: detaches.append(conn.step))

    async def scenario() -> Any:
        async with serve(
            {"/quiet": flow},
            "127.0.0.1",
            0,
            http_handler=_pages,
            ping_interval=HEARTBEAT,
            ping_timeout=HEARTBEAT,
        ) as server:
            proxy = CutProxy(server.port)  # the same path as the other test, never cut
            try:

                async def play(page: chromium.Page) -> Any:
                    script = QUIET_PAGE % {"port": proxy.port, "quiet_ms": int(2000 * WATCHDOG)}
                    return await asyncio.wait_for(
                        page.evaluate(script), deadline(2 * WATCHDOG + 15)
                    )

                outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
                await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            finally:
                await asyncio.to_thread(proxy.stop)
            return outcome, proxy

    out, proxy = run(scenario(), 90)
    assert out["result"]["code"] == 1000, out
    assert out["detaches"] == 0 and out["reconnects"] == 0, out
    assert detaches == [] and proxy.connections == 1
