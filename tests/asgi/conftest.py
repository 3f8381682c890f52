"""The ASGI stacks as conformance 'drivers' (see harness_asgi.py)."""

from __future__ import annotations

import pytest

from tests.asgi.harness_asgi import STACKS, AsgiHarness
from tests.transports.conftest import no_thread_leak, start_server

__all__ = ["no_thread_leak", "start_server"]


@pytest.fixture(params=list(STACKS))
def driver(request: pytest.FixtureRequest) -> AsgiHarness:
    return AsgiHarness(request.param)
