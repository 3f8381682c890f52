"""The examples run: examples/selectors_server.py against the `websockets` client."""

from __future__ import annotations

import importlib.util
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.timing import deadline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def selectors_server() -> Iterator[str]:
    module = load("selectors_server")
    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            module.main(0, ready=ports.put, stop=stop)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            ports.put(0)

    thread = threading.Thread(target=serve, name="selectors-server", daemon=True)
    thread.start()
    port = ports.get(timeout=deadline(5))
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(deadline(5))
        assert not thread.is_alive(), "the selectors server did not stop"
        assert errors == []


def client(url: str):  # type: ignore[no-untyped-def]
    return connect(
        url,
        proxy=None,
        compression=None,
        open_timeout=deadline(5),
        close_timeout=deadline(5),
    )


def test_selectors_server_real_exchange_and_clean_close(selectors_server: str) -> None:
    with client(selectors_server) as ws:
        assert ws.recv(timeout=deadline(5)) == b"hello, who are you?"
        ws.send(b"ann")
        assert ws.recv(timeout=deadline(5)) == b"hi ann"
        for message in (b"one", b"x" * 100_000, b""):
            ws.send(message)
            assert ws.recv(timeout=deadline(5)) == message
        ws.send(b"bye")  # the flow completes: the server closes with 1000
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=deadline(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert ws.close_code == 1000


def test_selectors_server_serves_connections_side_by_side(selectors_server: str) -> None:
    with client(selectors_server) as first, client(selectors_server) as second:
        for ws in (first, second):
            assert ws.recv(timeout=deadline(5)) == b"hello, who are you?"
        first.send(b"a")
        second.send(b"b")
        assert second.recv(timeout=deadline(5)) == b"hi b"
        assert first.recv(timeout=deadline(5)) == b"hi a"
        first.close()  # a client-initiated close
        assert first.close_code == 1000
        second.send(b"still here")
        assert second.recv(timeout=deadline(5)) == b"still here"


def test_selectors_server_refuses_text_with_1003(selectors_server: str) -> None:
    with client(selectors_server) as ws:
        ws.recv(timeout=deadline(5))
        ws.send("text, not bytes")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=deadline(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
