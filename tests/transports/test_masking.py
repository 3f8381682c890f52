"""The C speedup (`socker_transports.wire._speedups`) and its pure-Python fallback
(`socker_transports.wire.masking.py_*`) give the same results.

The fallback is what runs where no compiler was available at install time, and
what the suite's second pass uses (SOCKER_NO_SPEEDUPS=1, see the Makefile)."""

from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socker_transports.wire import masking


def speedups() -> ModuleType:
    try:
        return importlib.import_module("socker_transports.wire._speedups")
    except ImportError:
        pytest.fail("the C speedup is not built: `make install` needs a C compiler")


def reference(data: bytes, start: int, end: int, key: bytes, phase: int) -> bytes:
    return bytes(b ^ key[(phase + i) % 4] for i, b in enumerate(data[start:end]))


RANGES = st.binary(max_size=5000).flatmap(
    lambda data: st.tuples(
        st.just(data),
        st.integers(0, len(data)),
        st.integers(0, len(data)),
        st.binary(min_size=4, max_size=4),
        st.integers(0, 7),
    )
)


@settings(max_examples=300, deadline=None)
@given(RANGES)
def test_unmask_c_and_python_agree(case: tuple[bytes, int, int, bytes, int]) -> None:
    data, a, b, key, phase = case
    start, end = min(a, b), max(a, b)
    expected = reference(data, start, end, key, phase)
    assert masking.py_unmask(data, start, end, key, phase) == expected
    c = speedups()
    assert c.unmask(data, start, end, key, phase) == expected
    assert c.unmask(bytearray(data), start, end, key, phase) == expected
    assert c.unmask(memoryview(data), start, end, key, phase) == expected
    target = bytearray(b"head")
    c.unmask_into(target, data, start, end, key, phase)
    assert target == b"head" + expected
    target = bytearray(b"head")
    masking.py_unmask_into(target, data, start, end, key, phase)
    assert target == b"head" + expected


def test_unmask_refuses_bad_arguments() -> None:
    for unmask in (masking.py_unmask, speedups().unmask):
        with pytest.raises(ValueError):
            unmask(b"abc", 0, 4, b"1234", 0)
        with pytest.raises(ValueError):
            unmask(b"abc", 2, 1, b"1234", 0)
        with pytest.raises(ValueError):
            unmask(b"abc", 0, 3, b"123", 0)


def frame(opcode: int, payload: bytes, *, masked: bool, fin: bool = True, wide: int = 0) -> bytes:
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if wide == 2 or n > 0xFFFF:
        head = struct.pack("!BBQ", first, bit | 127, n)
    elif wide == 1 or n > 125:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = bytes((first, bit | n))
    return head + (b"\0\0\0\0" if masked else b"") + payload


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bool]:
    client = draw(st.booleans())
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(st.binary(max_size=12)))
            continue
        parts.append(
            frame(
                draw(st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9])),
                draw(st.binary(max_size=300)),
                masked=(not client) != (draw(st.integers(0, 9)) == 0),
                fin=draw(st.booleans()),
                wide=draw(st.sampled_from([0, 0, 1, 2])),
            )
        )
    stream = b"".join(parts)
    return stream[: draw(st.integers(0, len(stream)))], client


@settings(max_examples=300, deadline=None)
@given(streams())
def test_skip_data_frames_c_and_python_agree(case: tuple[bytes, bool]) -> None:
    stream, client = case
    for start in {0, min(3, len(stream))}:
        expected = masking.py_skip_data_frames(stream, start, client)
        assert speedups().skip_data_frames(stream, start, client) == expected


def test_skip_data_frames_stops_where_python_must_look() -> None:
    data = frame(0x2, b"abc", masked=True) + frame(0x0, b"", masked=True, fin=False)
    ping = frame(0x9, b"p", masked=True)
    for skip in (masking.py_skip_data_frames, speedups().skip_data_frames):
        assert skip(data + ping, 0, False) == len(data)  # a control frame
        assert skip(data + data[:3], 0, False) == len(data)  # an incomplete frame
        assert skip(data, 0, True) == 0  # masked frames to a client: an error
        assert skip(frame(0x2, b"x", masked=True, wide=1), 0, False) == 0  # not minimal


def test_the_environment_switch_forces_the_fallback() -> None:
    code = "from socker_transports.wire import masking; print(masking.SPEEDUPS)"
    env = {**os.environ, "SOCKER_NO_SPEEDUPS": "1"}
    forced = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert forced.stdout.strip() == "False"
    env.pop("SOCKER_NO_SPEEDUPS")
    default = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert default.stdout.strip() == "True"  # built by `make install`
    assert (not os.environ.get("SOCKER_NO_SPEEDUPS")) == masking.SPEEDUPS


@settings(max_examples=200, deadline=None)
@given(RANGES, st.booleans())
def test_unmask_at_fills_a_message_in_place(
    case: tuple[bytes, int, int, bytes, int], masked: bool
) -> None:
    data, a, b, key, phase = case
    start, end = min(a, b), max(a, b)
    c = speedups()
    expected = reference(data, start, end, key, phase) if masked else data[start:end]
    target = c.alloc_message(len(expected) + 3)
    c.unmask_at(target, 0, b"abc", 0, 3, None, 0)
    c.unmask_at(target, 3, data, start, end, key if masked else None, phase)
    assert target == b"abc" + expected
    with pytest.raises(ValueError):
        c.unmask_at(target, 4, data, start, end, None, 0) if expected else c.alloc_message(-1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(RANGES, st.booleans()), max_size=6), st.integers(0, 3))
def test_an_assembly_holds_exactly_what_was_added(
    pieces: list[tuple[tuple[bytes, int, int, bytes, int], bool]], spare: int
) -> None:
    c = speedups()
    assembly = c.Assembly(-1)
    expected = b""
    for (data, a, b, key, phase), masked in pieces:
        start, end = min(a, b), max(a, b)
        assembly.reserve(end - start + spare)  # room for more than is added: fine
        assembly.add(data, start, end, key if masked else None, phase)
        expected += reference(data, start, end, key, phase) if masked else data[start:end]
        assert len(assembly) == len(expected)
        assert assembly.capacity >= len(expected)
    assert assembly.finish() == expected  # at its exact size, whatever was reserved
    assert len(assembly) == 0 and assembly.capacity == 0
    assert assembly.finish() == b""  # empty after, and reusable


def test_an_assembly_refuses_misuse() -> None:
    c = speedups()
    assembly = c.Assembly(10)
    with pytest.raises(ValueError, match="limit"):
        assembly.reserve(11)
    assembly.reserve(4)
    with pytest.raises(ValueError, match="not reserved"):
        assembly.add(b"12345", 0, 5, None, 0)
    with pytest.raises(ValueError, match="out of range"):
        assembly.add(b"1234", 2, 1, None, 0)
    with pytest.raises(ValueError, match="4 bytes"):
        assembly.add(b"1234", 0, 4, b"abc", 0)
    with pytest.raises(ValueError):
        assembly.reserve(-1)
    assembly.add(b"1234", 0, 4, None, 0)
    assembly.reserve(6)  # up to the limit: allowed
    assert assembly.capacity <= 10
    assert assembly.finish() == b"1234"
