"""socker_core is pure: standard library only, no asyncio, no I/O, no clock, no threads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json, sys

    before = set(sys.modules)
    import socker_core
    import socker_core.testing
    imported = sorted(set(sys.modules) - before)

    # From here on, any I/O, clock read or thread is a failure.
    import builtins, io, os, socket, threading, time

    attempts = []

    def audit(event, args):
        if event.split(".")[0] in ("open", "socket", "subprocess", "os", "shutil", "time"):
            attempts.append(event)

    sys.addaudithook(audit)

    def forbidden(name):
        def refuse(*args, **kwargs):
            attempts.append(name)
            raise AssertionError(f"socker_core called {name}")
        return refuse

    for module, name in [
        (builtins, "open"), (io, "open"), (os, "open"), (socket, "socket"),
        (socket, "create_connection"), (time, "time"), (time, "monotonic"),
        (time, "perf_counter"), (time, "sleep"), (threading.Thread, "start"),
    ]:
        setattr(module, name, forbidden(f"{getattr(module, '__name__', module)}.{name}"))

    from socker_core import Close, Flow, Stepper
    from socker_core.testing import run_pair

    server = Flow("server")

    @server.on_open
    def hello(conn):
        conn.send(b"hello")

    @server.step(timeout=5.0)
    async def answer(conn, message):
        conn.send(message[::-1])
        return True

    server.add(lambda conn, message: Close(1000, "bye"), name="last")
    client = Flow("client")
    client.add(lambda conn, message: conn.send(b"ping") or False, name="listen")
    transcript = run_pair(server, client, latency=0.1, await_delay=0.1)
    transcript.table()
    transcript.mermaid()
    lone = Stepper(server)
    lone.open(0.0)
    lone.tick(10.0)
    lone.transport_closed(1006, "", 10.0)

    print(json.dumps({
        "imported": imported,
        "stdlib": sorted(sys.stdlib_module_names),
        "attempts": attempts,
        "outcome": transcript.outcome,
    }))
    """
)


def probe() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,  # `-c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_socker_core_imports_only_the_standard_library_and_does_no_io() -> None:
    result = probe()
    imported = result["imported"]
    stdlib = set(result["stdlib"])  # type: ignore[call-overload]
    assert isinstance(imported, list)
    assert "socker_core.testing" in imported
    foreign = [
        name
        for name in imported
        if name.split(".")[0] not in stdlib and name.split(".")[0] != "socker_core"
    ]
    assert foreign == []
    assert "asyncio" not in imported
    assert "hypothesis" not in imported  # fuzz_flow imports it lazily
    assert "threading" not in imported
    assert result["attempts"] == []
    assert result["outcome"] == "closed"
