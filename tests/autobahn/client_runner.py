"""Runs Autobahn TestSuite's client cases (wstest -m fuzzingserver) with a socker
client on one driver:

    python tests/autobahn/client_runner.py DRIVER ws://127.0.0.1:9001 AGENT

Each case is one connection running the echo flow (`conn.send(message); return
False`, accept_text=True, compression "deflate", no size limit), through the test
harness's `run_client` for DRIVER (anyio-asyncio, anyio-uvloop, anyio-trio,
threaded). See tests/autobahn/README.md.
"""

from __future__ import annotations

import sys

from socker_core import Connection, Flow
from tests.transports.conftest import DRIVERS

OPTIONS = {
    "accept_text": True,
    "compression": "deflate",
    "max_size": None,
    "max_send_buffer": 64 * 1024 * 1024,  # case 9 echoes 16 MiB messages
    "max_fragments": 1 << 17,  # cases 9.3 / 9.4 send 4 MiB in up to 65,536 fragments
}


def echo_flow() -> Flow:
    flow = Flow("autobahn-echo")

    @flow.step
    def echo(conn: Connection, message: bytes | str) -> bool:
        conn.send(message)
        return False

    return flow


def main() -> None:
    driver_name, base, agent = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    driver = DRIVERS[driver_name]()
    count: list[int] = []
    counter = Flow("case-count")

    @counter.step
    def got_count(conn: Connection, message: bytes | str) -> bool:
        count.append(int(message))
        return True

    driver.run_client(f"{base}/getCaseCount", counter, timeout=30, **OPTIONS)
    for case in range(1, count[0] + 1):
        result = driver.run_client(
            f"{base}/runCase?case={case}&agent={agent}", echo_flow(), timeout=120, **OPTIONS
        )
        print(f"case {case}: {result.code}", flush=True)
    driver.run_client(f"{base}/updateReports?agent={agent}", echo_flow(), timeout=120, **OPTIONS)


if __name__ == "__main__":
    main()
