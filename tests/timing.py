"""One environment factor scales every wait in the tests (SOCKER_TEST_TIME_FACTOR)."""

from __future__ import annotations

import os

TIME_FACTOR = float(os.environ.get("SOCKER_TEST_TIME_FACTOR", "1"))


def deadline(seconds: float) -> float:
    """A generous wait, scaled for slow or shared machines."""
    return seconds * TIME_FACTOR
