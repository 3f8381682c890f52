"""Worker processes: one port, N processes, supervised.

    from socker_transports import workers
    workers.run(flow, workers=4, host="127.0.0.1", port=8765)   # blocks; returns 0

or `socker serve app:flow --workers 4`. One socker process uses one core; `run` starts
N worker processes that serve the same port:

- With SO_REUSEPORT (Linux; `reuse_port=None` picks it where the kernel balances
  connections across the sockets), each worker listens on a socket of its own bound to
  the same address, and the kernel spreads new connections across them. The
  supervisor keeps a bound, non-listening socket on the port so a port of 0 is chosen
  once and a restarted worker gets the same port back.
- Elsewhere (or `reuse_port=False`) the supervisor listens once and every worker
  accepts on the inherited socket.

A worker whose supervisor disappears (killed -9) drains and exits by itself within
about half a second. The supervisor restarts a worker that dies (logged on the
"socker.workers" logger, with its exit status; a worker that keeps dying right after
it started is restarted with a growing delay, at most `MAX_RESTART_DELAY`), and on
SIGINT or SIGTERM tells every worker to shut down gracefully (stop accepting, close
connections with 1001 within `close_timeout`), waits for them, and returns 0.

Workers are forked, so `routes` (and whatever the flows close over) need not be
picklable; each worker starts with the supervisor's memory as it was when the worker
was (re)started.

The socket is bound here and handed to the driver through the servers' `sock=`
argument, on both drivers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import socket
import ssl as ssl_module
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from socker_core import Flow

from .wire import Options, format_host

__all__ = [
    "BACKENDS",
    "MAX_RESTART_DELAY",
    "Supervisor",
    "bind_socket",
    "reuse_port_available",
    "run",
]

logger = logging.getLogger("socker.workers")

#: The longest wait before restarting a worker that keeps dying at start.
MAX_RESTART_DELAY = 5.0
#: A worker that lived less than this is "dying at start" (its restart is delayed).
_CRASH_LOOP_WINDOW = 2.0
#: Extra time, beyond close_timeout, a worker gets to drain before it is killed.
_DRAIN_MARGIN = 5.0
#: How often a worker checks that its supervisor still exists (a supervisor killed
#: with SIGKILL cannot tell its workers: they notice and drain by themselves).
_ORPHAN_POLL = 0.5

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def reuse_port_available() -> bool:
    """Whether SO_REUSEPORT spreads connections across sockets here (Linux does; on
    macOS and the BSDs the option exists but does not balance the same way)."""
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


# -- sockets -------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_socket(host: str, port: int, *, reuse_port: bool, listen: bool) -> socket.socket:
    """A TCP socket bound to `host:port` (SO_REUSEPORT when asked), listening if
    `listen`; non-blocking, inheritable by forked workers."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- one worker ----------------------------------------------------------------------


@dataclass
class _WorkerSpec:
    routes: Flow | Mapping[str, Flow]
    host: str
    port: int
    driver: str
    backend: str
    ssl: ssl_module.SSLContext | None
    reuse_port: bool
    options: dict[str, Any] = field(default_factory=dict)
    server_kwargs: dict[str, Any] = field(default_factory=dict)
    supervisor_pid: int = field(default_factory=os.getpid)
    lifespan: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None


def _driver_serve(driver: str) -> Callable[..., Any]:
    if driver == "anyio":
        from . import anyio as module
    else:
        from . import threaded as module  # type: ignore[no-redef]
    serve: Callable[..., Any] = module.serve
    return serve


async def _serve_anyio(spec: _WorkerSpec, sock: socket.socket, ready: Callable[[], None]) -> None:
    # The lifespan (the application's per-worker resources: its engine, its pools)
    # opens before the first connection and closes after the last one has ended.
    lifespan = spec.lifespan() if spec.lifespan is not None else contextlib.nullcontext()
    async with lifespan:
        await _serve_anyio_server(spec, sock, ready)


async def _serve_anyio_server(
    spec: _WorkerSpec, sock: socket.socket, ready: Callable[[], None]
) -> None:
    import anyio

    serve = _driver_serve("anyio")
    kwargs: dict[str, Any] = {"ssl": spec.ssl, **spec.server_kwargs, **spec.options}
    server_cm = serve(spec.routes, sock=sock, **kwargs)
    server = await server_cm.__aenter__()
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            ready()

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logger.info("worker %d: %s, draining", os.getpid(), signal.Signals(signum).name)
                    server.close()
                    return

            async def stop_when_orphaned() -> None:
                while os.getppid() == spec.supervisor_pid:
                    await anyio.sleep(_ORPHAN_POLL)
                logger.warning("worker %d: the supervisor is gone, draining", os.getpid())
                server.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_on_signal)
                tg.start_soon(stop_when_orphaned)
                await server.serve_forever()
                tg.cancel_scope.cancel()
    except BaseException as exc:
        await server_cm.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await server_cm.__aexit__(None, None, None)


def _serve_threaded(spec: _WorkerSpec, sock: socket.socket, ready: Callable[[], None]) -> None:
    import threading

    serve = _driver_serve("threaded")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    kwargs: dict[str, Any] = {"ssl": spec.ssl, **spec.server_kwargs, **spec.options}
    server = serve(spec.routes, sock=sock, **kwargs)
    with server:
        runner = threading.Thread(target=server.serve_forever, name="socker-worker-serve")
        runner.start()
        ready()
        stop.wait()
        server.shutdown()
        runner.join()


def _worker_main(
    spec: _WorkerSpec,
    index: int,
    shared: socket.socket | None,
    ready: multiprocessing.connection.Connection,
) -> None:
    """The body of one worker process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers are not ours
    if shared is not None:
        sock = shared
    else:
        sock = bind_socket(spec.host, spec.port, reuse_port=True, listen=True)

    def announce() -> None:
        ready.send(os.getpid())
        ready.close()

    if spec.driver == "threaded":
        _serve_threaded(spec, sock, announce)
        return
    import anyio

    backend, backend_options = BACKENDS[spec.backend]
    anyio.run(_serve_anyio, spec, sock, announce, backend=backend, backend_options=backend_options)


# -- the supervisor ------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring). `run()`
    is the usual entry point; a Supervisor is for embedding its loop elsewhere."""

    def __init__(self, spec: _WorkerSpec, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.spec = spec
        self.workers = workers
        self._context = multiprocessing.get_context("fork")
        self._slots = [_Slot(index) for index in range(workers)]
        self._stopping = False
        self._signal: str | None = None
        self._shared: socket.socket | None = None
        self._placeholder: socket.socket | None = None

    @property
    def url(self) -> str:
        """The URL clients use: the workers' shared address."""
        scheme = "wss" if self.spec.ssl is not None else "ws"
        return f"{scheme}://{format_host(self.spec.host)}:{self.spec.port}"

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def bind(self) -> None:
        """Reserve the port (and, without SO_REUSEPORT, listen on it for all)."""
        spec = self.spec
        if spec.reuse_port:
            self._placeholder = bind_socket(spec.host, spec.port, reuse_port=True, listen=False)
            bound = self._placeholder.getsockname()
        else:
            self._shared = bind_socket(spec.host, spec.port, reuse_port=False, listen=True)
            bound = self._shared.getsockname()
        spec.port = int(bound[1])

    def _start(self, slot: _Slot, timeout: float) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self.spec, slot.index, self._shared, send),
            name=f"socker-worker-{slot.index}",
        )
        process.start()
        send.close()
        slot.process = process
        slot.started_at = time.monotonic()
        try:
            if not receive.poll(timeout):
                logger.error(
                    "worker %d (pid %s) did not start in %.0fs", slot.index, process.pid, timeout
                )
                return
            pid = receive.recv()
            if slot.restarts:
                logger.warning("worker %d restarted (pid %d)", slot.index, pid)
            else:
                logger.info("worker %d started (pid %d)", slot.index, pid)
        except EOFError:
            pass  # it died while starting: the watch loop reports and restarts it
        finally:
            receive.close()

    def start(self, timeout: float = 30.0) -> None:
        """Start every worker, waiting up to `timeout` seconds for each to listen."""
        for slot in self._slots:
            self._start(slot, timeout)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signal.Signals(signum).name
        self._stopping = True

    def watch(self, poll: float = 0.1) -> None:
        """Restart dead workers until a signal (or `stop()`) asks to stop."""
        while not self._stopping:
            sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
            multiprocessing.connection.wait(sentinels, timeout=poll)
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if process is not None and process.exitcode is not None and not self._stopping:
                    self._schedule_restart(slot, process, now)
                if slot.process is None and not self._stopping and now >= slot.restart_at:
                    slot.restarts += 1
                    self._start(slot, 30.0)

    def _schedule_restart(
        self, slot: _Slot, process: multiprocessing.process.BaseProcess, now: float
    ) -> None:
        code, pid = process.exitcode, process.pid
        how = (
            f"signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"status {code}"
        )
        process.close()
        slot.process = None
        lived = now - slot.started_at
        if lived < _CRASH_LOOP_WINDOW:
            slot.restart_delay = min(MAX_RESTART_DELAY, max(0.1, slot.restart_delay * 2))
        else:
            slot.restart_delay = 0.0
        slot.restart_at = now + slot.restart_delay
        logger.warning(
            "worker %d (pid %s) exited with %s after %.1fs; restarting%s",
            slot.index,
            pid,
            how,
            lived,
            f" in {slot.restart_delay:.1f}s" if slot.restart_delay else "",
        )

    def stop(self) -> None:
        """Ask `watch` to return (then `drain` the workers); safe from a signal handler."""
        self._stopping = True

    def drain(self) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, kill stragglers."""
        close_timeout = Options(**self.spec.options).close_timeout
        bound = (10.0 if close_timeout is None else close_timeout) + _DRAIN_MARGIN
        live = [s.process for s in self._slots if s.process is not None]
        for process in live:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        end = time.monotonic() + bound
        for process in live:
            process.join(max(0.0, end - time.monotonic()))
            if process.exitcode is None:
                logger.error("worker pid %s did not drain in %.0fs: killed", process.pid, bound)
                process.kill()
                process.join()
        for slot in self._slots:
            slot.process = None
        for sock in (self._shared, self._placeholder):
            if sock is not None:
                sock.close()

    def run(self, announce: Callable[[Supervisor], None] | None = None) -> int:
        """Bind, start the workers, call `announce(self)`, supervise until SIGINT or
        SIGTERM, then drain them all; returns 0."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.bind()
            self.start()
            if announce is not None:
                announce(self)
            self.watch()
            logger.info("%s: draining %d workers", self._signal or "stop", self.workers)
        finally:
            self.drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0


def run(
    routes: Flow | Mapping[str, Flow],
    *,
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8765,
    driver: str = "anyio",
    backend: str = "asyncio",
    ssl: ssl_module.SSLContext | None = None,
    reuse_port: bool | None = None,
    announce: Callable[[Supervisor], None] | None = None,
    lifespan: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    handshake_hook: Any = None,
    http_handler: Any = None,
    engine: str | None = None,
    on_resync: Any = None,
    **options: Any,
) -> int:
    """Serve `routes` on `host:port` from `workers` processes until SIGINT/SIGTERM;
    returns 0 once every worker has drained. `options` are `wire.Options` fields;
    `driver`/`backend` as for `socker serve`. `reuse_port=None` uses SO_REUSEPORT where
    it balances connections (`reuse_port_available()`), else one inherited socket.
    `announce(supervisor)` runs once every worker is listening (`supervisor.url`,
    `supervisor.pids`). `lifespan()` (anyio driver), an async context manager
    factory, runs in each worker around its server: open per-worker resources there
    (connections to Redis cannot be shared across fork). `engine` is a URL (see
    `engine.open_engine`): each worker opens its own engine after the fork, so
    rooms, broadcast and presence span every worker and every machine on the same
    store; `on_resync` goes to each worker's server. `workers=1`
    is one supervised worker (`socker serve` without `--workers` serves in-process
    instead). POSIX only (workers are forked)."""
    if not hasattr(os, "fork"):
        raise RuntimeError("worker processes need fork (POSIX)")
    if driver not in ("anyio", "threaded"):
        raise ValueError(f"unknown driver {driver!r}")
    if driver == "anyio" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if driver == "threaded" and lifespan is not None:
        raise ValueError("lifespan= is for the anyio driver (it runs on the worker's loop)")
    Options(**options)  # bad values fail here, before any process starts
    if engine is not None:
        if not isinstance(engine, str):
            raise TypeError("engine= is a URL here: each worker opens its own engine")
        from .engine import open_engine

        open_engine(engine)  # a bad URL fails here too (nothing connects yet)
    spec = _WorkerSpec(
        routes=routes,
        host=host,
        port=port,
        driver=driver,
        backend=backend,
        ssl=ssl,
        reuse_port=reuse_port_available() if reuse_port is None else reuse_port,
        options=dict(options),
        lifespan=lifespan,
        server_kwargs={
            k: v
            for k, v in (
                ("handshake_hook", handshake_hook),
                ("http_handler", http_handler),
                ("engine", engine),
                ("on_resync", on_resync),
            )
            if v is not None
        },
    )
    return Supervisor(spec, workers).run(announce)
