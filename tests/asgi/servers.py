"""Real ASGI servers (uvicorn, hypercorn) in a background thread, on 127.0.0.1.

Each server gets a listening socket bound to an ephemeral port before it starts
(uvicorn takes the socket, hypercorn an `fd://` bind), runs its own event loop in
its own thread, and `stop()` closes the socket App's connections first
(`App.close()`, 1001, on the server's loop), then tells the server to exit and
joins its thread, bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import hypercorn.asyncio
import hypercorn.config
import uvicorn

from socker_transports.asgi import App
from tests.timing import deadline


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (a cheap flag read) until true, bounded."""
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.005)


class ServerThread:
    """One ASGI server serving `asgi_app`; `socker_apps` are closed first on stop()."""

    kind = "?"

    def __init__(self, asgi_app: Any, socker_apps: list[App]) -> None:
        self.asgi_app = asgi_app
        self.socker_apps = socker_apps
        self.sock = listening_socket()
        self.port: int = self.sock.getsockname()[1]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-server", daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(deadline(10)) or self.error is not None:
            self.stop()
            raise AssertionError(f"{self.kind} did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        raise NotImplementedError

    def _request_exit(self) -> None:
        raise NotImplementedError

    def active_connections(self) -> int:
        return sum(len(app.connections) for app in self.socker_apps)

    def call(self, func: Callable[[], Any]) -> None:
        """Run `func` on the server's loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(func)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.loop is not None and self._thread.is_alive():
                for app in self.socker_apps:
                    self.call(app.close)
                wait_until(
                    lambda: self.active_connections() == 0,
                    deadline(15),
                    "the socker connections did not end",
                )
                self.loop.call_soon_threadsafe(self._request_exit)
            self._thread.join(deadline(15))
            assert not self._thread.is_alive(), f"{self.kind} did not stop"
        finally:
            self.sock.close()


class UvicornThread(ServerThread):
    kind = "uvicorn"
    ws = "auto"  # websockets-sansio when `websockets` is installed

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            self.asgi_app,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=5,
            ws=self.ws,
        )
        self.server = uvicorn.Server(config)
        self.loop.call_soon(self._watch_started)
        await self.server.serve(sockets=[self.sock])

    def _watch_started(self) -> None:
        assert self.loop is not None
        if self.server.started:
            self._ready.set()
        else:
            self.loop.call_later(0.005, self._watch_started)

    def _request_exit(self) -> None:
        self.server.should_exit = True


class UvicornWsprotoThread(UvicornThread):
    """uvicorn with its wsproto websocket protocol (`--ws wsproto`)."""

    kind = "uvicorn-wsproto"
    ws = "wsproto"


class HypercornThread(ServerThread):
    kind = "hypercorn"

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        config = hypercorn.config.Config()
        # hypercorn closes the descriptor it is given: give it a duplicate.
        config.bind = [f"fd://{os.dup(self.sock.fileno())}"]
        config.graceful_timeout = 5
        config.loglevel = "WARNING"
        config.accesslog = None
        self.loop.call_soon(self._ready.set)
        await hypercorn.asyncio.serve(self.asgi_app, config, shutdown_trigger=self._exit.wait)

    def _request_exit(self) -> None:
        self._exit.set()


class HypercornTrioThread(ServerThread):
    """hypercorn on trio: the App runs on anyio's trio backend."""

    kind = "hypercorn-trio"

    def _run(self) -> None:
        import trio

        try:
            trio.run(self._trio_main)
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc
            self._ready.set()

    async def _trio_main(self) -> None:
        import hypercorn.trio
        import trio

        self._token = trio.lowlevel.current_trio_token()
        self._exit_event = trio.Event()
        config = hypercorn.config.Config()
        config.bind = [f"fd://{os.dup(self.sock.fileno())}"]
        config.graceful_timeout = 5
        config.loglevel = "WARNING"
        config.accesslog = None
        self._ready.set()
        await hypercorn.trio.serve(self.asgi_app, config, shutdown_trigger=self._exit_event.wait)

    def call(self, func: Callable[[], Any]) -> None:
        import trio

        trio.from_thread.run_sync(func, trio_token=self._token)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._thread.is_alive() and self.error is None:
                for app in self.socker_apps:
                    self.call(app.close)
                wait_until(
                    lambda: self.active_connections() == 0,
                    deadline(15),
                    "the socker connections did not end",
                )
                self.call(self._exit_event.set)
            self._thread.join(deadline(15))
            assert not self._thread.is_alive(), f"{self.kind} did not stop"
        finally:
            self.sock.close()
