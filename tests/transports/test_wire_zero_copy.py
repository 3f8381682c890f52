"""The wire's copy-free paths, sans-I/O: `receive_data` given views of one reused
read buffer (as the asyncio and trio drivers now pass it), and `chunks_to_send`
keeping big payloads out of any join."""

from __future__ import annotations

import os
import random

import pytest

from socker_transports.wire import Options, Wire
from socker_transports.wire.connection import JOIN_LIMIT
from socker_transports.wire.frames import data_frame
from tests.transports.wire_peer import (
    Record,
    close_frame,
    echo_flow,
    frame,
    open_client,
    open_server,
    parse_frames,
    upgrade_request,
)

MiB = 1024 * 1024


def feed_through_one_buffer(wire: Wire, data: bytes, cuts: list[int], size: int) -> None:
    """Feed `data` cut at `cuts`, each piece as a view of one `size`-byte buffer that
    is scribbled over right after the call (what the next read would do)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    start = 0
    for end in [*cuts, len(data)]:
        while start < end:
            n = min(end - start, size)
            buffer[:n] = data[start : start + n]
            wire.receive_data(view[:n], 1.0)
            buffer[:] = b"\xaa" * size  # the wire must have copied what it keeps
            start += n


@pytest.mark.parametrize("seed", range(6))
def test_messages_fed_as_views_of_a_reused_buffer_arrive_intact(seed: int) -> None:
    rng = random.Random(seed)
    wire, record = open_server(max_size=4 * MiB, max_fragments=64)
    messages = [os.urandom(rng.choice((0, 1, 125, 126, 70_000, 300_000))) for _ in range(8)]
    stream = b""
    for message in messages:
        if rng.random() < 0.3 and len(message) > 2:  # fragmented, two frames
            half = len(message) // 2
            stream += frame(message[:half], 0x2, fin=False) + frame(message[half:], 0x0)
        else:
            stream += frame(message)
    stream += frame(b"ping!", 0x9)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    feed_through_one_buffer(wire, stream, cuts, rng.choice((7, 4096, 256 * 1024)))
    assert record.messages == messages
    echoed = [payload for _, payload, _ in parse_frames(bytes(wire.data_to_send()), client=True)]
    assert echoed == [*messages, b"ping!"]  # the echoes, then the pong


def test_the_handshake_and_the_close_fed_as_views() -> None:
    record = Record()
    wire = Wire.server(echo_flow(record), 0.0, Options())
    request = upgrade_request() + frame(b"hello") + close_frame(1000)
    feed_through_one_buffer(wire, request, list(range(1, len(request), 5)), 5)
    assert record.messages == [b"hello"]
    assert record.closes == [(1000, "")]


def test_a_client_reads_views_too() -> None:
    wire, _server, record = open_client(max_size=2 * MiB)
    payload = os.urandom(MiB)
    header, body = data_frame(payload, text=False, client=False)
    feed_through_one_buffer(wire, header + body, [3, 70_000, 500_001], 64 * 1024)
    assert record.messages == [payload]


def test_chunks_to_send_keeps_a_big_payload_out_of_any_join() -> None:
    wire, _ = open_server(max_size=4 * MiB)
    big = os.urandom(MiB)
    wire.send(b"a", 1.0)
    wire.send(b"b", 1.0)
    wire.send(big, 1.0)
    wire.send(b"c", 1.0)
    chunks = wire.chunks_to_send()
    assert [len(chunk) for chunk in chunks] == [3 + 3 + 10, MiB, 3]
    assert chunks[1] is big  # the application's own bytes: never copied
    assert wire.buffered_amount == 0 and wire.chunks_to_send() == []
    frames = parse_frames(b"".join(chunks), client=True)
    assert [payload for _, payload, _ in frames] == [b"a", b"b", big, b"c"]


def test_chunks_to_send_joins_small_messages_into_one_buffer() -> None:
    wire, _ = open_server()
    for _ in range(100):
        wire.send(b"x" * 16, 1.0)
    chunks = wire.chunks_to_send()
    assert len(chunks) == 1 and len(chunks[0]) == 100 * 18
    wire.send(b"y" * JOIN_LIMIT, 1.0)
    assert [len(chunk) for chunk in wire.chunks_to_send()] == [4, JOIN_LIMIT]


def test_chunks_to_send_and_data_to_send_say_the_same() -> None:
    rng = random.Random(7)
    sizes = [rng.choice((1, 100, JOIN_LIMIT - 1, JOIN_LIMIT, 200_000)) for _ in range(30)]
    one, _ = open_server(max_size=4 * MiB)
    two, _ = open_server(max_size=4 * MiB)
    for size in sizes:
        message = os.urandom(size)
        one.send(message, 1.0)
        two.send(message, 1.0)
    assert b"".join(one.chunks_to_send()) == bytes(two.data_to_send())


def test_unsent_part_of_a_vectored_write() -> None:
    from socker_transports.wire import unsent_part

    chunks: list[bytes | bytearray | memoryview] = [b"abc", b"defgh", b"ij"]
    assert unsent_part(list(chunks), 0) == chunks
    assert [bytes(c) for c in unsent_part(list(chunks), 2)] == [b"c", b"defgh", b"ij"]
    assert [bytes(c) for c in unsent_part(list(chunks), 3)] == [b"defgh", b"ij"]
    assert [bytes(c) for c in unsent_part(list(chunks), 9)] == [b"j"]
    assert unsent_part(list(chunks), 10) == []


def test_a_fragmented_message_is_assembled_in_the_bytes_the_handler_gets() -> None:
    """With the speedup, a fragmented binary message grows in one bytes object
    handed to the handler as is: the memory it takes at its peak is about the
    message (a bytearray plus a final copy to bytes would take twice that)."""
    import tracemalloc

    from socker_transports.wire import masking
    from socker_transports.wire.reader import FrameReader

    size, piece = 4 * MiB, 64 * 1024
    message = os.urandom(size)
    stream = b"".join(
        frame(message[i : i + piece], 0x2 if i == 0 else 0x0, fin=i + piece >= size)
        for i in range(0, size, piece)
    )
    reader = FrameReader(client=False, max_size=8 * MiB, max_fragments=4096)
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)
    got: list[object] = []
    tracemalloc.start()
    try:
        for start in range(0, len(stream), len(buffer)):
            n = min(len(buffer), len(stream) - start)
            buffer[:n] = stream[start : start + n]
            got.extend(reader.feed(view[:n]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [message]
    if masking.SPEEDUPS:
        assert peak < 1.25 * size, peak
    else:  # the fallback: a bytearray, then bytes
        assert peak < 2.5 * size, peak
