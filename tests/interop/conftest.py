"""The driver matrix of tests/transports (anyio on asyncio, uvloop and trio; threaded),
reused for the Node interop tests."""

from tests.transports.conftest import driver, start_server

__all__ = ["driver", "start_server"]
