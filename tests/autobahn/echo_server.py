"""The echo flow Autobahn TestSuite's fuzzingclient runs against (issue 13):

    python tests/autobahn/echo_server.py DRIVER PORT

DRIVER: anyio-asyncio, anyio-uvloop, anyio-trio or threaded. The flow's only step
is `conn.send(message); return False`, served with accept_text=True, compression
"deflate" (cases 12-13 negotiate it; the others do not offer it), no message size
limit (case 9 sends 16 MiB messages) and the default fragment limit. Serves until
killed. See tests/autobahn/README.md for the wstest run.
"""

from __future__ import annotations

import sys
import time

from socker_core import Connection, Flow

flow = Flow("autobahn-echo")


@flow.step
def echo(conn: Connection, message: bytes | str) -> bool:
    conn.send(message)
    return False


OPTIONS = {
    "accept_text": True,
    "compression": "deflate",
    "max_size": None,
    "max_send_buffer": 64 * 1024 * 1024,  # case 9 echoes 16 MiB messages
    "max_fragments": 1 << 17,  # cases 9.3 / 9.4 send 4 MiB in up to 65,536 fragments
}


def main() -> None:
    driver, port = sys.argv[1], int(sys.argv[2])
    if driver == "threaded":
        from socker_transports.threaded import serve

        serve(flow, "127.0.0.1", port, **OPTIONS)
        while True:
            time.sleep(3600)
    import anyio

    from socker_transports.anyio import serve as aserve

    async def run() -> None:
        async with aserve(flow, "127.0.0.1", port, **OPTIONS) as server:
            await server.serve_forever()

    backend = "trio" if driver == "anyio-trio" else "asyncio"
    options = {"use_uvloop": True} if driver == "anyio-uvloop" else {}
    anyio.run(run, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
