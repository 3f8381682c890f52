"""Raw-socket websocket peers and the bookkeeping of the bad-input and fault suites.

Everything here talks to a real driver over 127.0.0.1 only.

- `frame(...)`: one frame built by hand (masking, opcode, RSV bits, FIN, an
  announced length that need not match the payload).
- `RawPeer`: a websocket peer on a plain socket, client or server side: a valid
  handshake, then any bytes; reads frames back; vanishes on demand (RST through
  SO_LINGER 0, half-close through shutdown(SHUT_WR)).
- `http_exchange`: send raw bytes instead of a handshake, read the HTTP answer.
- `RawServer`: a hand-written websocket server for client-side faults.
- `Ledger`: counts every connection's on_open / on_close on the server.
- `Witness`: a well-behaved `websockets` client that walks the game server's
  4-step flow on the same server, one step at a time, while a bad peer misbehaves.
- `Arena`: one server per test (with a `/witness` route), and the teardown checks
  every case shares: no connection left running, on_close exactly once per opened
  connection with a documented code, no thread or file descriptor left behind.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from socker_core import CLOSE_CODES, Connection, Flow
from socker_transports.wire import Wire
from tests.timing import deadline
from tests.transports.flows import (
    CONNECTED,
    OFFER,
    SCENE,
    SPAWNED,
    make_game_client,
    make_game_server,
)
from tests.transports.harness import DriverHarness, RunningServer

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- frames ------------------------------------------------------------------------------


def mask(key: bytes, data: bytes) -> bytes:
    """`data` XOR the 4-byte masking `key` (fast enough for megabytes)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def frame(
    payload: bytes = b"",
    opcode: int = OP_BINARY,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame, built by hand so that it can be wrong on purpose. `length` is the
    announced payload length (default: the real one); `rsv` is the 3 RSV bits."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | ((rsv & 0b111) << 4) | (opcode & 0x0F)
    bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4) if key is None else key
    return header + key + mask(key, payload)


def close_payload(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


class Frame(NamedTuple):
    opcode: int
    payload: bytes
    fin: bool


def parse_close(payload: bytes) -> tuple[int | None, bytes]:
    if len(payload) < 2:
        return None, b""
    return int(struct.unpack("!H", payload[:2])[0]), payload[2:]


# -- handshakes --------------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def upgrade_request(
    port: int,
    path: str = "/",
    *,
    key: str | None = None,
    version: str | None = "13",
    origin: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A client's opening request; `key`/`version` None leave the header out."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {new_key() if key is None else key}",
    ]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_status(response: bytes) -> int:
    """The status code of an HTTP response (0 when there is none)."""
    parts = response.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.1") or not parts[1].isdigit():
        return 0
    return int(parts[1])


def http_exchange(port: int, request: bytes, *, timeout: float | None = None) -> bytes:
    """Send `request` (anything) on a fresh connection; return all the server sent
    before it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout or deadline(5)) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return _read_to_eof(sock)


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything until EOF (or a reset); bounded by the socket's timeout per read."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


# -- the raw peer ------------------------------------------------------------------------


class RawPeer:
    """A websocket peer on a plain blocking socket (every read bounded by the
    socket timeout). `client=True` masks what it sends and expects unmasked frames."""

    def __init__(self, sock: socket.socket, *, client: bool = True) -> None:
        self.sock = sock
        self.client = client
        self.buffer = bytearray()  # received, unread from `pos` on
        self.pos = 0
        self.closed = False

    @classmethod
    def connect(
        cls,
        port: int,
        path: str = "/game",
        *,
        handshake: bool = True,
        origin: str | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        timeout: float | None = None,
    ) -> RawPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Buffer sizes must be set before connecting to bound the TCP window.
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            sock.settimeout(timeout or deadline(5))
            sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        peer = cls(sock)
        if handshake:
            try:
                peer.handshake(port, path, origin=origin)
            except BaseException:
                peer.close()
                raise
        return peer

    # -- handshakes ----------------------------------------------------------

    def handshake(self, port: int, path: str = "/game", *, origin: str | None = None) -> None:
        key = new_key()
        self.sock.sendall(upgrade_request(port, path, key=key, origin=origin))
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101"), head
        accepts = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"sec-websocket-accept:")
        ]
        assert accepts == [accept_key(key).encode()], head

    def serve_handshake(self) -> bytes:
        """The server side: read the request, answer 101. Returns the request head."""
        head = self.read_head()
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        self.sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode()
        )
        return head

    def read_head(self) -> bytes:
        """An HTTP head (up to the blank line); what follows it stays buffered."""
        while (end := self.buffer.find(b"\r\n\r\n", self.pos)) < 0:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed during the handshake: {bytes(self.buffer)!r}"
            self.buffer += chunk
        return self._take(end + 4 - self.pos)[:-4]

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, payload: bytes = b"", opcode: int = OP_BINARY, **kwargs: Any) -> None:
        kwargs.setdefault("masked", self.client)
        self.sock.sendall(frame(payload, opcode, **kwargs))

    def send_message(self, data: bytes) -> None:
        self.send_frame(data, OP_BINARY)

    def send_close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        self.send_frame(close_payload(code, reason), OP_CLOSE)

    # -- receiving -----------------------------------------------------------

    def _fill(self, n: int) -> bool:
        """Make `n` unread bytes available (False at the end of the stream)."""
        while len(self.buffer) - self.pos < n:
            if self.pos:  # drop what was read (only when more must come: amortized)
                del self.buffer[: self.pos]
                self.pos = 0
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[self.pos : self.pos + n])
        self.pos += n
        return data

    def recv_exactly(self, n: int) -> bytes:
        """The next `n` raw bytes of the stream."""
        assert self._fill(n), "the stream ended early"
        return self._take(n)

    def recv_frame(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or a reset)."""
        if not self._fill(2):
            return None
        first, second = self.buffer[self.pos], self.buffer[self.pos + 1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if not self._fill(4):
                return None
            length, offset = struct.unpack_from("!H", self.buffer, self.pos + 2)[0], 4
        elif length == 127:
            if not self._fill(10):
                return None
            length, offset = struct.unpack_from("!Q", self.buffer, self.pos + 2)[0], 10
        is_masked = bool(second & 0x80)
        assert is_masked != self.client, f"frame masking is wrong for this side: {second:#x}"
        key_len = 4 if is_masked else 0
        if not self._fill(offset + key_len + length):
            return None
        self._take(offset)
        key = self._take(key_len)
        payload = self._take(length)
        if is_masked:
            payload = mask(key, payload)
        return Frame(first & 0x0F, payload, bool(first & 0x80))

    def recv_data(self) -> bytes:
        """The next data message's payload (single frame), answering pings on the way."""
        while True:
            got = self.recv_frame()
            assert got is not None, "connection ended while waiting for a message"
            if got.opcode == OP_PING:
                self.send_frame(got.payload, OP_PONG)
                continue
            if got.opcode == OP_PONG:
                continue
            assert got.opcode == OP_BINARY and got.fin, got
            return got.payload

    def expect_close(self, *, reply: str = "close") -> tuple[int | None, bytes]:
        """Read until the peer's close frame; `reply` with a close frame ("close") or
        just our FIN ("fin", when a close frame could not be parsed any more), then
        wait for the end of the stream. Returns (code, raw reason)."""
        frames = []
        while (got := self.recv_frame()) is not None and got.opcode != OP_CLOSE:
            frames.append(got)
        assert got is not None, f"stream ended without a close frame after {frames}"
        code, reason = parse_close(got.payload)
        with contextlib.suppress(OSError):
            if reply == "close":
                self.send_close(code)
            else:
                self.shutdown_write()
        rest = self.read_until_eof()
        assert all(f.opcode in (OP_PING, OP_PONG) for f in rest), rest
        return code, reason

    def read_until_eof(self) -> list[Frame]:
        frames = []
        while (got := self.recv_frame()) is not None:
            frames.append(got)
        return frames

    # -- walking the game server's flow ----------------------------------------

    def game_steps(self, steps: int, name: str = "raw") -> None:
        """Walk `steps` steps of the game server's flow (see flows.make_game_server)."""
        script = [
            (b"hi " + name.encode(), SCENE),
            (b"ready", OFFER),
            (b"answer:" + name.encode(), CONNECTED),
            (b"spawn", SPAWNED),
        ]
        for message, answer in script[:steps]:
            self.send_message(message)
            assert self.recv_data() == answer

    # -- going away ----------------------------------------------------------

    def reset(self) -> None:
        """Vanish with a TCP reset (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def shutdown_write(self) -> None:
        """Half-close: our FIN, while still able to read."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_buffer_limits() -> tuple[int, int]:
    """The kernel's largest (receive, send) buffer of one TCP socket: what it may
    hold for a connection whose application stopped reading or writing, on top of
    anything the application holds (Linux autotunes up to tcp_rmem / tcp_wmem)."""
    limits = []
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                limits.append(int(f.read().split()[2]))
        except (OSError, ValueError, IndexError):
            limits.append(64 << 20)
    return limits[0], limits[1]


def send_until_stalled(
    sock: socket.socket, data: bytes, *, stall: float | None = None, limit: float | None = None
) -> int:
    """Write `data` without blocking until the socket takes nothing for `stall`
    seconds (the receiver stopped reading) or all of it is sent. Fails if neither
    happens within `limit` seconds. Returns the bytes sent (the socket is left
    blocking)."""
    view = memoryview(data)
    sent = 0
    stall = deadline(0.3) if stall is None else stall
    end = time.monotonic() + (limit or deadline(10))
    sock.setblocking(False)
    try:
        while sent < len(view):
            assert time.monotonic() < end, f"still sending after {sent} bytes: no stall"
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [sock], [], stall)
            if not writable:
                break  # stalled: nothing was taken for `stall` seconds
    finally:
        sock.setblocking(True)
        sock.settimeout(deadline(5))
    return sent


# -- a hand-written server, for client-side faults ----------------------------------------


class RawServer:
    """Accepts up to `count` connections on 127.0.0.1, one at a time, and runs
    `script(peer, index)` on each (after the 101 answer) in one thread."""

    def __init__(self, script: Callable[[RawPeer, int], None], *, count: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(deadline(5))
        self.port = self.listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.script = script
        self.count = count
        self.errors: list[BaseException] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="rawserver", daemon=True)

    def _run(self) -> None:
        try:
            for index in range(self.count):
                sock, _ = self.listener.accept()
                sock.settimeout(deadline(5))
                peer = RawPeer(sock, client=False)
                try:
                    peer.serve_handshake()
                    self.script(peer, index)
                finally:
                    peer.close()
        except BaseException as exc:  # reported by __exit__
            if not self.stopping:  # not the listener closing under an accept
                self.errors.append(exc)

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.listener.close()
        self.thread.join(deadline(10))
        assert not self.thread.is_alive(), "raw server thread did not end"
        if self.errors:
            raise self.errors[0]


# -- on_open / on_close bookkeeping -------------------------------------------------------


@dataclass
class End:
    """One on_close call: which route's flow, at which step, with what code."""

    label: str
    step: str
    code: int | None
    reason: str
    state: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Counts on_open and on_close per connection (thread-safe, waitable)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        #: id(conn) -> (label, conn): holding each conn keeps the ids unique.
        self.opened: dict[int, tuple[str, Connection]] = {}
        self.closes: Counter[int] = Counter()
        self.ends: list[End] = []

    def watch(self, flow: Flow, label: str) -> Flow:
        @flow.on_open
        def opened(conn: Connection) -> None:
            with self._changed:
                self.opened[id(conn)] = (label, conn)
                self._changed.notify_all()

        @flow.on_close
        def closed(conn: Connection) -> None:
            end = End(label, conn.step, conn.close_code, conn.close_reason, dict(vars(conn.state)))
            with self._changed:
                self.closes[id(conn)] += 1
                self.ends.append(end)
                self._changed.notify_all()

        return flow

    def wait_ends(self, label: str, count: int, timeout: float | None = None) -> list[End]:
        """Wait for at least `count` on_close calls of `label`'s flow; return them."""
        timeout = deadline(5) if timeout is None else timeout

        def mine() -> list[End]:
            return [end for end in self.ends if end.label == label]

        with self._changed:
            if not self._changed.wait_for(lambda: len(mine()) >= count, timeout):
                raise AssertionError(f"expected {count} {label} on_close call(s): {self.ends}")
            return mine()

    def opened_labels(self) -> list[str]:
        with self._changed:
            return sorted(label for label, _ in self.opened.values())

    def check(self) -> None:
        """Every opened connection was closed exactly once, with a documented code."""
        with self._changed:
            unopened = set(self.closes) - set(self.opened)
            assert not unopened, f"on_close without on_open: {self.ends}"
            counts = {key: self.closes[key] for key in self.opened}
            assert all(n == 1 for n in counts.values()), f"on_close counts {counts}: {self.ends}"
            undocumented = [end for end in self.ends if end.code not in CLOSE_CODES]
            assert not undocumented, f"undocumented close codes: {undocumented}"


def watched_game_client(ledger: Ledger, label: str = "client") -> Flow:
    return ledger.watch(make_game_client(), label)


# -- the well-behaved witness ---------------------------------------------------------------


class Witness:
    """A `websockets` client that walks the game server's 4 steps on the same server
    as the bad peer, one `step()` at a time, so the bad case happens while it is live."""

    SCRIPT = (
        (b"hi witness", SCENE),
        (b"ready", OFFER),
        (b"answer:witness", CONNECTED),
        (b"spawn", SPAWNED),
    )

    def __init__(self, url: str, *, origin: str | None = None) -> None:
        self.ws: ClientConnection = ws_connect(
            url,
            origin=None if origin is None else Origin(origin),
            proxy=None,
            compression=None,
            legacy=True,  # a connection object, not a context manager
            open_timeout=deadline(5),
            close_timeout=deadline(5),
        )
        self.done = 0

    def step(self) -> None:
        message, answer = self.SCRIPT[self.done]
        self.ws.send(message)
        assert self.ws.recv(timeout=deadline(5)) == answer
        self.done += 1

    def finish(self) -> None:
        """The remaining steps; then "bye" completes the server's flow with 1000."""
        while self.done < len(self.SCRIPT):
            self.step()
        self.ws.send(b"bye")
        try:
            self.ws.recv(timeout=deadline(5))
            raise AssertionError("the witness got a message after bye")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "flow complete")
        self.close()

    def close(self) -> None:
        self.ws.close()


# -- one server per test, and the checks every case shares --------------------------------


def open_fds() -> dict[str, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[name] = os.readlink(f"/proc/self/fd/{name}")
    return found


def settle_leaks(threads: set[threading.Thread], fds: int, what: str) -> None:
    """Wait (bounded) until no thread beyond `threads` runs and no more than `fds`
    file descriptors are open."""
    end = time.monotonic() + deadline(3)
    while True:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        now_fds = open_fds()
        if not extra and len(now_fds) <= fds:
            return
        if time.monotonic() > end:
            raise AssertionError(
                f"{what} left behind: threads {extra}, fds {len(now_fds)} > {fds}: {now_fds}"
            )
        time.sleep(0.01)  # a bounded settle poll, not synchronization


_warmed: set[str] = set()


def warm_up(driver: DriverHarness) -> None:
    """Run one connection through a fresh driver once per process, so one-time
    global resources (uvloop's pipe, lazy imports) are not counted as leaks."""
    if driver.name in _warmed:
        return
    server = driver.start_server(make_game_server(), close_timeout=deadline(2))
    try:
        Witness(server.url).finish()
        driver.run_client(server.url, make_game_client(), timeout=deadline(5))
    finally:
        server.stop()
    _warmed.add(driver.name)


class Arena:
    """One server under test, with a `/game` route (the game server) and a
    `/witness` route (another one, for the witness), plus the test's own routes.

    `finish()` (the fixture's teardown) closes every peer, waits until the server
    has no connection left (no task or thread still serving), stops it, then checks
    on_close ran exactly once per opened connection with a documented code and that
    no thread or file descriptor outlived the server."""

    def __init__(self, driver: DriverHarness) -> None:
        self.driver = driver
        self.ledger = Ledger()
        self.peers: list[RawPeer] = []
        self.witnesses: list[Witness] = []
        self.server: RunningServer | None = None
        self.options: dict[str, Any] = {}
        self._threads: set[threading.Thread] = set()
        self._fds = 0
        warm_up(driver)

    def start(self, routes: Mapping[str, Flow] | None = None, **options: Any) -> RunningServer:
        assert self.server is None, "one server per Arena"
        all_routes = {"/game": make_game_server(), **(routes or {})}
        all_routes["/witness"] = make_game_server()
        for path, flow in all_routes.items():
            self.ledger.watch(flow, path)
        options.setdefault("close_timeout", deadline(2))
        self.options = options
        self._threads = set(threading.enumerate())
        self._fds = len(open_fds())
        self.server = self.driver.start_server(all_routes, **options)
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def peer(self, path: str = "/game", **kwargs: Any) -> RawPeer:
        peer = RawPeer.connect(self.port, path, **kwargs)
        self.peers.append(peer)
        return peer

    def witness(self) -> Witness:
        """A live witness that has already done its first step."""
        assert self.server is not None
        origins = self.options.get("origins")
        witness = Witness(self.server.url + "/witness", origin=origins[0] if origins else None)
        self.witnesses.append(witness)
        witness.step()
        return witness

    def wires(self) -> list[Wire]:
        """The server's live wires (driver internals: for buffer-size assertions)."""
        assert self.server is not None
        inner: Any = getattr(self.server, "inner", self.server)
        server: Any = inner.server
        if hasattr(server, "_sessions"):  # anyio
            return [session.wire for session in list(server._sessions)]
        with server._lock:  # threaded
            return [link.wire for link in server._links]

    def wait_active(self, count: int) -> None:
        assert self.server is not None
        end = time.monotonic() + deadline(5)
        while (active := self.server.active_connections()) != count:
            assert time.monotonic() < end, f"{active} connection(s) still served, want {count}"
            time.sleep(0.01)  # a bounded settle poll

    def finish(self) -> None:
        if self.server is None:
            return
        try:
            for peer in self.peers:
                peer.close()
            for witness in self.witnesses:
                witness.close()
            self.wait_active(0)
        finally:
            self.server.stop()
        self.ledger.check()
        settle_leaks(self._threads, self._fds, f"{self.driver.name} server")


@contextlib.contextmanager
def arena_for(driver: DriverHarness) -> Iterator[Arena]:
    arena = Arena(driver)
    try:
        yield arena
    finally:
        arena.finish()
