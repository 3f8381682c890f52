"""The arena in headless Chromium: two pages and one bot in one match.

Each page is a player (static/arena.html + arena.js on socker.js) with the
autopilot on; the bot runs in this process. The test reads each page's state
(``window.arena``), saves a screenshot of the arena, cuts the second page's
websocket (a TCP reset through a relay the page connects through) and checks the
resume while the data channel keeps delivering, then every player quits with 1000.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from socker_transports.anyio import serve
from socker_transports.arena import run as arena_run
from socker_transports.arena.bots import run_bot
from socker_transports.arena.cut import CutRelay
from socker_transports.arena.server import PATH, Match
from tests.timing import deadline

from . import chromium, guard
from .test_webrtc import run

#: Set SOCKER_ARTIFACTS=<dir> to keep a copy of the screenshot there too.
ARTIFACTS = os.environ.get("SOCKER_ARTIFACTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[chromium.Browser]:
    with chromium.launch(deadline(20)) as running:
        yield running


async def until(check: Any, seconds: float, what: str) -> None:
    end = asyncio.get_running_loop().time() + deadline(seconds)
    while not await check():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def screenshot(page: chromium.Page, path: Path) -> Path:
    """Save what `page` shows (wide enough for the arena and its side panel)."""
    size = {"width": 1200, "height": 700, "deviceScaleFactor": 1, "mobile": False}
    await page.cdp.call("Emulation.setDeviceMetricsOverride", size, page.session)
    await asyncio.sleep(0.3)  # a few animation frames at the new size
    shot = await page.cdp.call("Page.captureScreenshot", {"format": "png"}, page.session)
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"arena screenshot: {path}")
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(ARTIFACTS) / path.name)
    return path


def test_two_pages_and_a_bot_play_one_match(
    browser: chromium.Browser, ice_guard: guard.Record, tmp_path: Path
) -> None:
    records: list[dict[str, Any]] = []

    async def scenario() -> dict[str, Any]:
        match = Match(report=records.append)
        routes = {PATH: match.flow()}
        async with serve(routes, "127.0.0.1", 0, http_handler=arena_run.http_handler) as server:
            ticker = asyncio.create_task(match.run())
            bot = asyncio.create_task(
                run_bot(server.url + PATH, "bot-1", deadline(15), (), records.append)
            )
            try:
                async with CutRelay(server.port) as relay, chromium.devtools(browser) as cdp:
                    return await play(cdp, server.port, relay, bot)
            finally:
                ticker.cancel()
                bot.cancel()
                await asyncio.gather(ticker, bot, return_exceptions=True)

    async def play(cdp: chromium.DevTools, port: int, relay: CutRelay, bot: Any) -> dict[str, Any]:
        base = f"http://127.0.0.1:{port}/?auto=1"
        one, two = await cdp.new_page(), await cdp.new_page()
        pages = {"page-1": one, "page-2": two}
        try:
            await asyncio.wait_for(one.navigate(f"{base}&name=page-1"), deadline(15))
            await asyncio.wait_for(
                two.navigate(f"{base}&name=page-2&ws={relay.port}"), deadline(15)
            )

            async def state(page: chromium.Page) -> dict[str, Any]:
                found: dict[str, Any] = await page.evaluate(
                    "({moving: arena.moving, states: arena.states, slot: arena.slot,"
                    " step: arena.step, channel: arena.channelState, resumes: arena.resumes,"
                    " closed: arena.closed, statesWhileCut: arena.statesWhileCut,"
                    " latencies: arena.latencies.length, world: arena.world && arena.world.tick})"
                )
                return found

            # Each page sees the other page and the bot move (read from the page's state).
            for name, page in pages.items():
                others = sorted({"page-1", "page-2", "bot-1"} - {name})

                async def sees(page: chromium.Page = page, others: list[str] = others) -> bool:
                    return sorted((await state(page))["moving"]) == others

                await until(sees, 30, f"{name} to see {others} move")
            before = {name: await state(page) for name, page in pages.items()}
            for name, seen in before.items():
                assert seen["step"] == "control" and seen["channel"] == "open", (name, seen)
                assert seen["latencies"] > 0, f"{name}: no input came back echoed"

            picture = await screenshot(one, tmp_path / "arena.png")

            # Cut page-2's websocket: a TCP reset on both sides, nothing on the data channel.
            assert await two.evaluate("arena.resumable")  # socker.js has onDetach/onResume
            assert relay.cut() == 1
            cut_states = (await state(two))["states"]

            async def resumed() -> bool:
                return bool((await state(two))["resumes"] >= 1)

            await until(resumed, 20, "page-2 to resume")
            after = await state(two)
            assert after["step"] == "control" and after["channel"] == "open", after
            assert after["closed"] is None, after

            async def flowing() -> bool:
                return bool((await state(two))["states"] > cut_states + 20)

            await until(flowing, 10, "page-2's data channel to keep delivering")
            assert (await state(two))["channel"] == "open"  # never closed or reopened
            await screenshot(two, tmp_path / "arena-page-2-resumed.png")
            server_view = [r for r in records if r.get("ev") in ("detached", "resumed")]
            assert [r["ev"] for r in server_view if r.get("name") == "page-2"] == [
                "detached",
                "resumed",
            ]

            # Everyone quits: the server's flow completes with 1000 for each.
            await one.evaluate("arena.quit()")
            await two.evaluate("arena.quit()")
            await asyncio.wait_for(bot, deadline(40))
            left: dict[str, Any] = {}

            async def everyone_left() -> bool:
                left.update({r["name"]: r for r in records if r.get("ev") == "left"})
                return len(left) == 3

            await until(everyone_left, 20, "every player to leave")
            return {"left": left, "picture": picture}
        except BaseException:
            for name, page in pages.items():
                print(f"{name} console:", *page.console, sep="\n  ")
            print("chromium log:", browser.log_tail())
            raise

    outcome = run(scenario(), 150)
    left = outcome["left"]
    assert left["page-1"]["code"] == 1000 and left["bot-1"]["code"] == 1000, left
    assert outcome["picture"].stat().st_size > 5000
    assert all(
        r["bot"] is False for r in records if r.get("ev") == "joined" and "page" in r["name"]
    )
    assert left["page-2"]["code"] == 1000, left
