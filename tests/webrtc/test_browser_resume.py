"""Headless Chromium: socker.js with reconnect: true against the Python server.
The test cuts the websocket (a TCP reset through a loopback proxy it controls)
while data-channel messages flow: the websocket resumes, no control message is
lost or repeated, and the data channel never closes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from socker_core import Connection, Flow, Result
from socker_transports import demo, webrtc
from socker_transports.anyio import serve
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.timing import deadline
from tests.transports.cutproxy import CutProxy

from . import chromium, guard
from .test_browser import _until, open_page
from .test_webrtc import run

CONTROL = 20
CUT_AT = 5

PAGE = """
(async () => {
  const { Flow, connect, webrtc } = await import("/socker.js");
  const enc = (s) => new TextEncoder().encode(s);
  const dec = (m) => new TextDecoder().decode(m);
  const flow = new Flow("resume");
  const acks = [];
  const out = { dcIn: 0, dcWhileDetached: 0, dcClosed: false, detaches: 0, resumes: 0 };
  let channelRef = null;
  webrtc.clientOffers(flow, {
    label: "echo",
    onChannel: (conn, channel) => {
      channelRef = channel;
      channel.addEventListener("close", () => { out.dcClosed = true; });
      channel.addEventListener("message", () => {
        out.dcIn += 1;
        if (conn.detached) out.dcWhileDetached += 1;
      });
      let i = 0;
      conn.state.pump = setInterval(() => {
        if (channel.readyState === "open") channel.send(enc("dc:" + i++));
      }, 5);
      let k = 0;
      const control = setInterval(() => {
        if (k >= %(control)d) { clearInterval(control); return; }
        conn.send(enc("ctl:" + k++));  // kept for replay while detached
      }, 10);
    },
  });
  flow.onDetach(() => { out.detaches += 1; });
  flow.onResume(() => { out.resumes += 1; });
  flow.add((conn, m) => {
    const text = dec(m);
    acks.push(text);
    if (acks.length === %(control)d) {
      clearInterval(conn.state.pump);
      out.dcOpenAtEnd = channelRef.readyState === "open";
      out.dcClosedBeforeEnd = out.dcClosed;
      conn.send(enc("bye"));
    }
    return false;
  }, { name: "control" });
  const conn = connect("ws://127.0.0.1:%(port)d/echo", flow, { reconnect: true });
  out.result = await conn.closed;
  out.acks = acks;
  out.reconnects = conn.reconnects;
  return out;
})()
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[chromium.Browser]:
    with chromium.launch(deadline(20)) as running:
        yield running


def test_socker_js_resumes_while_the_data_channel_keeps_flowing(
    browser: chromium.Browser, ice_guard: guard.Record
) -> None:
    control: list[str] = []
    dc_in: list[bytes] = []
    closes: list[int | None] = []
    detaches: list[str] = []
    proxies: list[CutProxy] = []
    flow = Flow("resume", resume_window=deadline(10.0))

    def on_channel(conn: Connection, channel: Any) -> None:
        @channel.on("message")
        def echo(message: bytes) -> None:
            dc_in.append(message)
            channel.send(b"echo:" + message)

    webrtc.server_answers(flow, on_channel=on_channel)

    @flow.step
    def control_step(conn: Connection, message: bytes) -> Result:
        text = message.decode()
        if text == "bye":
            return True
        control.append(text)
        conn.send(f"ack:{text}".encode())
        if text == f"ctl:{CUT_AT}":
            proxies[0].refuse_for(0.3)  # the browser stays detached a while
            proxies[0].cut("rst")
        return False

    flow.on_detach(lambda conn: detaches.append(conn.step))
    flow.on_close(lambda conn: closes.append(conn.close_code))

    def pages(request: HandshakeRequest) -> HttpResponse | None:
        if request.path == "/socker.js":
            return HttpResponse(200, demo.static_file("socker.js"), "text/javascript")
        return HttpResponse(200, b"<!doctype html><title>socker</title>", "text/html")

    async def scenario() -> Any:
        async with serve({"/echo": flow}, "127.0.0.1", 0, http_handler=pages) as server:
            proxy = CutProxy(server.port)
            proxies.append(proxy)
            try:

                async def play(page: chromium.Page) -> Any:
                    script = PAGE % {"control": CONTROL, "port": proxy.port}
                    return await asyncio.wait_for(page.evaluate(script), deadline(30))

                outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
                await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            finally:
                await asyncio.to_thread(proxy.stop)
            return outcome, proxy.connections

    out, connections = run(scenario(), 90)
    expected = [f"ctl:{k}" for k in range(CONTROL)]
    assert out["result"]["code"] == 1000, out
    assert out["acks"] == [f"ack:{m}" for m in expected]  # each once, in order
    assert control == expected
    assert out["detaches"] == out["resumes"] == out["reconnects"] == 1
    assert detaches == ["control_step"] and closes == [1000]
    assert connections >= 2  # the refused attempts, then the resume
    # The data channel never closed, and game data kept flowing while detached.
    assert out["dcOpenAtEnd"] is True and out["dcClosedBeforeEnd"] is False
    assert out["dcWhileDetached"] > 0, out
    assert out["dcIn"] > 0 and len(dc_in) >= out["dcIn"]
    assert len(ice_guard.peers) == 1 and ice_guard.open_peers() == []


REFUSED_PAGE = """
(async () => {
  const { Flow, connect } = await import("/socker.js");
  const flow = new Flow("refused");
  const out = { detaches: 0, resumes: 0 };
  flow.onOpen((conn) => conn.send(new TextEncoder().encode("hi")));
  flow.onDetach(() => { out.detaches += 1; });
  flow.onResume(() => { out.resumes += 1; });
  flow.add(() => false, { name: "wait" });
  const conn = connect("ws://127.0.0.1:%(port)d/hold", flow, { reconnect: true });
  out.result = await conn.closed;
  out.reconnects = conn.reconnects;
  return out;
})()
"""


def test_socker_js_reports_a_refused_resume(browser: chromium.Browser) -> None:
    """The server ended the detached session (here: its on_detach closes it); the
    browser's resume is refused with 4410 and socker.js reports that code."""
    proxies: list[CutProxy] = []
    flow = Flow("hold", resume_window=deadline(10.0))

    @flow.step
    def hold(conn: Connection, message: bytes) -> bool:
        proxies[0].cut("rst")
        return False

    flow.on_detach(lambda conn: conn.close(1000, "no resume for you"))

    def pages(request: HandshakeRequest) -> HttpResponse | None:
        if request.path == "/socker.js":
            return HttpResponse(200, demo.static_file("socker.js"), "text/javascript")
        return HttpResponse(200, b"<!doctype html><title>socker</title>", "text/html")

    async def scenario() -> Any:
        async with serve({"/hold": flow}, "127.0.0.1", 0, http_handler=pages) as server:
            proxy = CutProxy(server.port)
            proxies.append(proxy)
            try:

                async def play(page: chromium.Page) -> Any:
                    script = REFUSED_PAGE % {"port": proxy.port}
                    return await asyncio.wait_for(page.evaluate(script), deadline(30))

                outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
                await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            finally:
                await asyncio.to_thread(proxy.stop)
            return outcome

    out = run(scenario(), 60)
    assert out["result"]["code"] == 4410, out
    assert out["detaches"] == 1 and out["resumes"] == 0 and out["reconnects"] == 0
