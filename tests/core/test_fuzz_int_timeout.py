"""fuzz_flow accepts a flow whose step timeout is an int (`timeout=5`), as the
README writes it: its clock ops are floats whatever the timeout's type."""

from __future__ import annotations

from socker_core import Flow
from socker_core.testing import fuzz_flow


def test_fuzz_flow_with_an_int_timeout() -> None:
    flow = Flow("int-timeout")
    flow.add(lambda conn, message: True, name="first", timeout=5)
    flow.add(lambda conn, message: False, name="last")
    stats = fuzz_flow(flow, max_examples=30, seed=1)
    assert stats.runs >= 30
    assert 4408 in stats.close_codes  # the clock ops did reach the int timeout
