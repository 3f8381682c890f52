"""A loopback TCP proxy the test controls: it forwards between clients and a
server, and cuts connections on demand.

- `cut("rst")`: both sides get a TCP reset (SO_LINGER 0), as when a NAT forgets.
- `cut("silent")`: forwarding stops and no FIN or RST is sent to either side (a
  wifi blink): only keepalive notices.
- `plan(budgets, mode)`: the n-th connection from now is cut once `budgets[n]`
  bytes of websocket data (counted after the HTTP 101 head) went server ->
  client: byte-exact, so a test can cut inside any frame.

One thread accepts, one thread per connection pair pumps with `select`; `stop()`
closes every socket and joins every thread (bounded).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from tests.timing import deadline


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    silent: bool = False
    closed: bool = False
    to_client: int = 0
    budget: int | None = None
    head: bytes = b""  # the HTTP head so far (None once it is through)
    head_done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # accept() wakes up to see stop()
        self.port = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._plan: list[int | None] = []
        self._refuse_until = 0.0
        self._mode = "rst"
        self.connections = 0
        self.cuts = 0
        self._accepter = threading.Thread(target=self._accept, name="cutproxy-accept")
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- control -----------------------------------------------------------------

    def plan(self, budgets: list[int | None], mode: str = "rst") -> None:
        """Cut the n-th next connection after budgets[n] bytes (None: never)."""
        with self._lock:
            self._plan = list(budgets)
            self._mode = mode

    def refuse_for(self, seconds: float) -> None:
        """Reset every new connection for `seconds` (the server looks unreachable)."""
        self._refuse_until = time.monotonic() + seconds

    def cut(self, mode: str = "rst") -> None:
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed and not p.silent]
        for pair in pairs:
            self._cut(pair, mode)

    def _cut(self, pair: _Pair, mode: str) -> None:
        with pair.lock:
            if pair.closed or pair.silent:
                return
            self.cuts += 1
            if mode == "rst":
                pair.closed = True
                _reset(pair.client)
                _reset(pair.server)
            else:
                pair.silent = True  # the pump keeps the sockets and drops what comes

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            with pair.lock:
                if not pair.closed:
                    pair.closed = True
                    pair.client.close()
                    pair.server.close()
        for thread in [self._accepter, *self._threads]:
            thread.join(deadline(5.0))
            assert not thread.is_alive(), f"{thread.name} did not end"

    # -- threads -----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if time.monotonic() < self._refuse_until:
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            with self._lock:
                if self._plan:
                    pair.budget = self._plan.pop(0)
                self._pairs = [p for p in self._pairs if not p.closed]
                self._pairs.append(pair)
                self.connections += 1
            thread = threading.Thread(target=self._pump, args=(pair,), name="cutproxy-pump")
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _pump(self, pair: _Pair) -> None:
        peers = {pair.client: pair.server, pair.server: pair.client}
        try:
            while not pair.closed:
                try:
                    readable, _, _ = select.select(list(peers), [], [], 0.05)
                except (OSError, ValueError):
                    return
                for sock in readable:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    with pair.lock:
                        if pair.closed:
                            return
                        if not data:
                            if pair.silent:
                                # This side gave up; the other must not hear of it.
                                peers.pop(sock, None)
                                if not peers:
                                    return
                                continue
                            pair.closed = True
                            for s in (pair.client, pair.server):
                                with contextlib.suppress(OSError):
                                    s.shutdown(socket.SHUT_WR)
                            return
                        if pair.silent:
                            continue
                        target = peers[sock]
                        if sock is pair.server:
                            data = self._budget(pair, data)
                        try:
                            if data:
                                target.sendall(data)
                        except OSError:
                            pair.closed = True
                            return
                    if pair.budget is not None and pair.to_client >= pair.budget:
                        pair.budget = None
                        self._cut(pair, self._mode)
                        break
        finally:
            with pair.lock:
                pair.closed = True
                pair.client.close()
                pair.server.close()

    def _budget(self, pair: _Pair, data: bytes) -> bytes:
        if pair.budget is None:
            return data
        skip = 0
        if not pair.head_done:
            seen = pair.head + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                pair.head = seen[-3:]
                return data
            pair.head_done = True
            skip = end + 4 - (len(seen) - len(data))
        room = pair.budget - pair.to_client
        if room < len(data) - skip:
            data = data[: skip + max(room, 0)]
        pair.to_client += len(data) - skip
        return data
