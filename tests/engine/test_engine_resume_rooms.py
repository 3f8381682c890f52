"""Cluster rooms and resume together: with `engine=`, publications come back through
the engine and are delivered like a local broadcast, so a member whose transport is
cut keeps them (detached) and gets each once, in order, after it resumes. The
scenario is tests/transports/test_rooms_resume.py's, on every driver, with the
in-process engine and a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest

from socker_core import Flow
from tests.transports.conftest import DRIVERS, StartServer, start_server  # noqa: F401
from tests.transports.harness import DriverHarness
from tests.transports.test_resume import proxy_for  # noqa: F401 (fixture)
from tests.transports.test_rooms_resume import (
    test_broadcasts_to_a_cut_member_arrive_after_it_resumes as cut_member_scenario,
)


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest) -> DriverHarness:
    return DRIVERS[request.param]()


@pytest.mark.parametrize("engine", ["memory", "redis"])
def test_cluster_broadcasts_to_a_cut_member_arrive_after_it_resumes(
    driver: DriverHarness,
    start_server: StartServer,  # noqa: F811 (the fixture imported above)
    proxy_for: Any,  # noqa: F811
    engine: str,
    request: pytest.FixtureRequest,
) -> None:
    url = "memory://" if engine == "memory" else request.getfixturevalue("redis_url")

    def start(routes: Flow, **options: Any) -> Any:
        return start_server(routes, engine=url, **options)

    cut_member_scenario(driver, start, proxy_for, "rst")
