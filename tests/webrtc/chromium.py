"""Headless Debian Chromium with the flags from LOOPBACK.md, driven over CDP.

No Playwright and no browser download: `/usr/bin/chromium` is started with
exactly the LOOPBACK.md flags plus ``--remote-debugging-port=0`` (a DevTools
endpoint on 127.0.0.1), and the tests speak the DevTools protocol with the
`websockets` library.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import websockets

CHROMIUM = os.environ.get("SOCKER_CHROMIUM", "/usr/bin/chromium")

#: LOOPBACK.md: these kept a browser-to-aiortc data channel on loopback.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--webrtc-ip-handling-policy=default_public_interface_only",
]


class Browser:
    """A running Chromium: `devtools` is its browser-level DevTools websocket URL."""

    def __init__(self, process: subprocess.Popen[bytes], devtools: str, log: Path) -> None:
        self.process = process
        self.devtools = devtools
        self.log = log

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@contextlib.contextmanager
def launch(start_timeout: float) -> Iterator[Browser]:
    """Start Chromium; always stops it (and its child processes) on exit."""
    if not shutil.which(CHROMIUM):
        raise RuntimeError(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="socker-chromium-") as home:
        profile = Path(home) / "profile"
        log = Path(home) / "chromium.log"
        args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [*args, "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        try:
            active = profile / "DevToolsActivePort"
            end = time.monotonic() + start_timeout
            while True:
                if active.exists():
                    lines = active.read_text().split()
                    if len(lines) >= 2:
                        break
                if process.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(
                        f"Chromium did not start (exit {process.poll()}):\n"
                        + log.read_text(errors="replace")[-3000:]
                    )
                time.sleep(0.05)
            yield Browser(process, f"ws://127.0.0.1:{lines[0]}{lines[1]}", log)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


class CDPError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat CDP session."""

    def __init__(self, cdp: DevTools, session: str) -> None:
        self.cdp = cdp
        self.session = session
        self.console: list[str] = []
        self.loaded = asyncio.Event()

    async def navigate(self, url: str) -> None:
        """Load `url` and wait for its load event (the caller bounds the wait)."""
        self.loaded = asyncio.Event()
        reply = await self.cdp.call("Page.navigate", {"url": url}, self.session)
        if reply.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {reply['errorText']}")
        await self.loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """Evaluate `expression` (awaiting a promise) and return its JSON value."""
        reply = await self.cdp.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            self.session,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"page exception: {text}\nconsole: {self.console}")
        return reply["result"].get("value")


class DevTools:
    """A minimal DevTools protocol client over the `websockets` library."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pages: dict[str, Page] = {}

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        ident = next(self.ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self.waiting[ident] = future
        await self.ws.send(json.dumps(message))
        return await future

    async def read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self.waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(CDPError(str(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
            elif message.get("method") == "Page.loadEventFired":
                page = self.pages.get(message.get("sessionId", ""))
                if page is not None:
                    page.loaded.set()
            elif message.get("method") == "Runtime.consoleAPICalled":
                page = self.pages.get(message.get("sessionId", ""))
                if page is not None:
                    args = message["params"].get("args", [])
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
                    page.console.append(f"{message['params'].get('type')}: {text}")
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(CDPError("DevTools connection closed"))

    async def new_page(self) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self.pages[page.session] = page
        await self.call("Runtime.enable", {}, page.session)
        await self.call("Page.enable", {}, page.session)
        return page


@contextlib.asynccontextmanager
async def devtools(browser: Browser) -> AsyncIterator[DevTools]:
    async with websockets.connect(
        browser.devtools, max_size=None, compression=None, proxy=None
    ) as ws:
        cdp = DevTools(ws)
        reader = asyncio.create_task(cdp.read())
        try:
            yield cdp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
