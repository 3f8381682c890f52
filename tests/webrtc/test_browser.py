"""A real headless Chromium (Debian's, LOOPBACK.md flags) against the Python server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from socker_core import Connection, Flow
from socker_transports import classic_demo as demo
from socker_transports.anyio import serve
from socker_transports.wire import HandshakeRequest, HttpResponse
from tests.timing import deadline

from . import chromium, guard
from .peer import CLIENT_OFFERS, echo_server_flow
from .test_webrtc import run


@pytest.fixture(scope="module")
def browser() -> Iterator[chromium.Browser]:
    with chromium.launch(deadline(20)) as running:
        yield running


async def open_page(browser: chromium.Browser, url: str, work: Any) -> Any:
    """Load `url` in a new tab and return `await work(page)`."""
    async with chromium.devtools(browser) as cdp:
        page = await cdp.new_page()
        await asyncio.wait_for(page.navigate(url), deadline(15))
        try:
            return await work(page)
        except BaseException:
            report(browser, page)
            raise


def report(browser: chromium.Browser, page: chromium.Page) -> None:
    """Print what the page and Chromium logged (pytest shows it for a failed test)."""
    print("console:", *page.console, sep="\n  ")
    print("chromium log:", browser.log_tail())


WAIT_FOR_DEMO = """
new Promise((resolve, reject) => {
  const end = Date.now() + %d;
  (function poll() {
    if (window.sockerDemo) return resolve(window.sockerDemo.done);
    if (Date.now() > end) return reject(new Error("the demo page did not start"));
    setTimeout(poll, 20);
  })();
})
"""


def test_demo_page_completes_the_handshake_in_chromium(
    browser: chromium.Browser, ice_guard: guard.Record
) -> None:
    """The README's scenario with the browser as the client: scene over the
    websocket, hello, the server's offer, the browser's answer, the data channel,
    200 game-state round trips, control messages, and a clean 1000 close."""
    rounds = 200
    lines: list[str] = []

    async def scenario() -> Any:
        flow = demo.server_flow(lines.append)
        routes = {demo.GAME_PATH: flow}
        async with serve(routes, "127.0.0.1", 0, http_handler=demo.http_handler) as server:
            # The page's own wait for each reply (5 s) scaled like every other wait:
            # the test is about the handshake and the round trips, not their latency.
            url = f"http://127.0.0.1:{server.port}/?rounds={rounds}&patience={deadline(20)}"

            async def play(page: chromium.Page) -> Any:
                summary = await asyncio.wait_for(
                    page.evaluate(WAIT_FOR_DEMO % (deadline(30) * 1000)), deadline(40)
                )
                table = await page.evaluate("document.getElementById('rows').innerText")
                if not summary.get("ok"):
                    report(browser, page)  # the page failed without raising
                return summary, table

            result = await open_page(browser, url, play)
            await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            return result

    summary, table = run(scenario(), 90)
    assert summary["ok"], (summary, table, lines)
    assert summary["close"]["code"] == 1000 and summary["close"]["reason"] == "flow complete"
    assert summary["steps"] == "control"
    assert (summary["roundTrips"], summary["dcOut"], summary["dcIn"]) == (rounds,) * 3
    assert summary["connectToOpenMs"] > 0
    # The page counts the messages its own steps get: scene chunks, E, J you, J bot, L bot.
    assert summary["wsIn"] == len(demo._scene(demo.DEFAULT_SCENE_KIB)) + 4
    assert "control: player 'bot-2' joined" in table and "player 'bot-2' left" in table
    assert lines[0].startswith("sends buffered scene")
    assert "sets remote description from the client's answer" in lines
    assert any(line.startswith("data channel 'game' open") for line in lines)
    assert lines[-1] == "closed 1000 'flow complete'; peer connection closed"
    assert len(ice_guard.peers) == 1 and ice_guard.open_peers() == []


CLIENT_OFFERS_PAGE = """
(async () => {
  const { Flow, run, webrtc } = await import("/socker.js");
  const flow = new Flow("echo");
  const got = [];
  const text = new TextDecoder();
  webrtc.clientOffers(flow, {
    label: "echo",
    onChannel: (conn, channel) => {
      channel.addEventListener("message", (event) => {
        got.push(text.decode(event.data));
        if (got.length === 11) conn.send(new TextEncoder().encode("done"));
      });
      for (let i = 0; i < 10; i++) channel.send(new TextEncoder().encode("ping" + i));
    },
  });
  const steps = [];
  flow.onStep((conn, from, to) => steps.push(to));
  flow.add(() => false, { name: "control" });
  const result = await run(`ws://${location.host}/echo`, flow);
  return { result, got, steps };
})()
"""


def test_socker_js_client_offers_to_python_server(
    browser: chromium.Browser, ice_guard: guard.Record
) -> None:
    """socker.js's clientOffers (the original author's direction) against the
    Python server_answers step: channel messages both ways, then 1000."""
    received: list[bytes] = []

    def pages(request: HandshakeRequest) -> HttpResponse | None:
        if request.path == "/socker.js":
            return HttpResponse(200, demo.static_file("socker.js"), "text/javascript")
        if request.path == "/":
            return HttpResponse(200, b"<!doctype html><title>socker</title>", "text/html")
        return HttpResponse(404, b"")

    async def scenario() -> Any:
        flow = echo_server_flow(CLIENT_OFFERS, received)
        async with serve({"/echo": flow}, "127.0.0.1", 0, http_handler=pages) as server:

            async def play(page: chromium.Page) -> Any:
                return await asyncio.wait_for(page.evaluate(CLIENT_OFFERS_PAGE), deadline(30))

            outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
            await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            return outcome

    outcome = run(scenario(), 60)
    assert outcome["result"]["code"] == 1000, outcome
    assert outcome["result"]["reason"] == "flow complete"
    assert outcome["steps"] == ["webrtc-connect", "control"]
    assert outcome["got"] == ["welcome"] + [f"echo:ping{i}" for i in range(10)]
    assert received == [b"ping%d" % i for i in range(10)]
    assert len(ice_guard.peers) == 1 and ice_guard.open_peers() == []


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.02)


STEP_SEMANTICS_PAGE = """
(async () => {
  const { Flow, run, goto, closeWith } = await import("/socker.js");
  const url = `ws://${location.host}/echo`;
  const enc = (s) => new TextEncoder().encode(s);
  const dec = (m) => new TextDecoder().decode(m);
  const out = {};

  // advance, stay, goto: the echo server returns every message.
  {
    const flow = new Flow("chain");
    const seen = [];
    flow.onOpen((conn) => conn.send(enc("1")));
    flow.onStep((conn, from, to) => seen.push(to));
    flow.add((conn, m) => {
      if (dec(m) === "1") { conn.send(enc("2")); return false; }  // stay
      conn.send(enc("3")); return true;                           // advance
    }, { name: "first" });
    flow.add((conn, m) => {
      if (dec(m) === "3") { conn.send(enc("4")); return goto("third"); }
      return closeWith(4000, "unexpected");
    }, { name: "second" });
    flow.add((conn, m) => dec(m) === "4", { name: "third" });  // last step: 1000
    out.chain = { result: await run(url, flow), seen };
  }

  // async handlers: later messages wait, in order.
  {
    const flow = new Flow("queue");
    const order = [];
    flow.onOpen((conn) => ["a", "b", "c"].forEach((s) => conn.send(enc(s))));
    flow.add(async (conn, m) => {
      await new Promise((r) => setTimeout(r, 20));
      order.push(dec(m));
      return dec(m) === "c";
    }, { name: "slow" });
    out.queue = { result: await run(url, flow), order };
  }

  // a handler that throws: 1011 locally, 1000 + reason on the wire.
  {
    const flow = new Flow("throws");
    flow.onOpen((conn) => conn.send(enc("x")));
    flow.add(() => { throw new Error("boom"); }, { name: "bad" });
    out.throws = { result: await run(url, flow) };
  }

  // a step timeout: 4408.
  {
    const flow = new Flow("timeout");
    flow.add(() => false, { name: "silent", timeout: 0.2 });
    out.timeout = { result: await run(url, flow) };
  }
  return out;
})()
"""


def test_socker_js_step_semantics(browser: chromium.Browser) -> None:
    """socker.js keeps the Python model: advance, stay, goto, ordered async
    handlers, completion with 1000, errors and step timeouts with their codes."""
    closes: list[tuple[int | None, str]] = []
    flow = Flow("echo")

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        conn.send(message)
        return False

    @flow.on_close
    def closed(conn: Connection) -> None:
        closes.append((conn.close_code, conn.close_reason))

    def pages(request: HandshakeRequest) -> HttpResponse | None:
        if request.path == "/socker.js":
            return HttpResponse(200, demo.static_file("socker.js"), "text/javascript")
        return HttpResponse(200, b"<!doctype html><title>socker</title>", "text/html")

    async def scenario() -> Any:
        async with serve({"/echo": flow}, "127.0.0.1", 0, http_handler=pages) as server:

            async def play(page: chromium.Page) -> Any:
                return await asyncio.wait_for(page.evaluate(STEP_SEMANTICS_PAGE), deadline(30))

            outcome = await open_page(browser, f"http://127.0.0.1:{server.port}/", play)
            await asyncio.wait_for(_until(lambda: server.active == 0), deadline(10))
            return outcome

    out = run(scenario(), 60)
    chain = out["chain"]
    assert chain["seen"] == ["first", "second", "third"]
    assert (chain["result"]["code"], chain["result"]["reason"]) == (1000, "flow complete")
    assert out["queue"]["order"] == ["a", "b", "c"]
    assert out["queue"]["result"]["code"] == 1000
    throws = out["throws"]["result"]
    assert (throws["code"], throws["sentCode"], throws["reason"]) == (1011, 1000, "internal error")
    timeout = out["timeout"]["result"]
    assert timeout["code"] == 4408 and "silent" in timeout["reason"]
    assert closes == [
        (1000, "flow complete"),
        (1000, "flow complete"),
        (1000, "internal error"),
        (4408, "step 'silent' timed out after 0.2s"),
    ]
