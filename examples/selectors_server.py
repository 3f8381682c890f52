"""Use socker from your own loop: a `selectors` websocket server driving `Wire`.

`Wire` is sans-I/O: it never touches a socket or a clock. This loop does the
I/O and follows the contract in the `Wire` docstring: read while `wants_data`,
write `data_to_send()`, `tick` at `next_deadline`, close the socket once
`should_close_transport`. A game loop, an `asyncio.Protocol` or gevent would do
the same. (The flow here is synchronous; async handlers need a loop that can
await them: see `socker_transports.anyio`.)

    python examples/selectors_server.py     # then connect to ws://127.0.0.1:8765
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections.abc import Callable
from time import monotonic

from socker_core import Connection, Flow
from socker_transports.wire import Options, Wire

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
log = logging.getLogger("selectors_server")


def greeter() -> Flow:
    """The server speaks first, learns a name, then echoes until "bye"."""
    flow = Flow("greeter")

    @flow.on_open
    def hello(conn: Connection) -> None:
        conn.send(b"hello, who are you?")

    @flow.step(timeout=30.0)
    def name(conn: Connection, message: bytes) -> bool:
        conn.send(b"hi " + message)
        return True  # advance

    @flow.step
    def echo(conn: Connection, message: bytes) -> bool:
        if message == b"bye":
            return True  # past the last step: the flow completes, close 1000
        conn.send(message)
        return False  # stay

    return flow


class Client:
    def __init__(self, sock: socket.socket, wire: Wire) -> None:
        self.sock, self.wire, self.out, self.interest = sock, wire, b"", 0

    def flush(self) -> None:
        """Send what we can; take more from the wire only once the last is out
        (so a slow reader makes `wants_data` False: backpressure)."""
        if not self.out:
            self.out = bytes(self.wire.data_to_send())
        if self.out:
            try:
                self.out = self.out[self.sock.send(self.out) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.wire.abort(monotonic(), f"write failed: {exc}")
                self.out = b""


def main(
    port: int = 8765,
    *,
    host: str = "127.0.0.1",
    options: Options | None = None,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve `greeter()` until `stop` is set; `ready(port)` is called once listening."""
    flow, sel = greeter(), selectors.DefaultSelector()
    listener = socket.create_server((host, port))
    listener.setblocking(False)
    sel.register(listener, READ, None)
    if ready is not None:
        ready(listener.getsockname()[1])
    clients: list[Client] = []
    while stop is None or not stop.is_set():
        now = monotonic()
        deadlines = [c.wire.next_deadline for c in clients]
        timeout = min([0.2] + [max(0.0, d - now) for d in deadlines if d is not None])
        for key, mask in sel.select(timeout):
            if key.data is None:  # a new connection
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                wire = Wire.server(flow, monotonic(), options, peer=f"{address[0]}:{address[1]}")
                clients.append(Client(sock, wire))
                continue
            client: Client = key.data
            if mask & READ and client.wire.wants_data:
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # a reset ends the stream like EOF
                client.wire.receive_data(data or None, monotonic())
        now = monotonic()
        for client in list(clients):
            wire = client.wire
            deadline = wire.next_deadline
            if deadline is not None and deadline <= now:
                wire.tick(now)
            for event in wire.events():
                log.debug("%s: %s", wire.peer, event)  # Opened, StepChanged, Closed...
            client.flush()
            interest = (READ if wire.wants_data else 0) | (WRITE if client.out else 0)
            if wire.should_close_transport:  # what is left is a close frame or an
                interest = 0  # HTTP error: one last try above, then close
            if interest != client.interest:
                if client.interest:
                    sel.unregister(client.sock)
                if interest:
                    sel.register(client.sock, interest, client)
                client.interest = interest
            if wire.should_close_transport:
                client.sock.close()
                clients.remove(client)
    for client in clients:
        client.sock.close()
    sel.close()
    listener.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
