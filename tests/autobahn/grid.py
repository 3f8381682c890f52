"""Runs the Autobahn TestSuite grid against socker and prints the per-case counts:

    python tests/autobahn/grid.py [--side server,client] [--drivers anyio-asyncio,...]
        [--cases 1.*,2.*,...] [--jobs 2] [--timeout 3000] [--out DIR]
        [--python2 PATH] [--abt-site DIR]

One job per (side, driver): server side, `echo_server.py DRIVER PORT` and wstest's
fuzzingclient against it; client side, wstest's fuzzingserver and
`client_runner.py DRIVER`. Every job gets its own free loopback port and output
folder, at most `--jobs` run at once, and each is killed after `--timeout`
seconds (its finished cases still count: wstest runs through `wstest_incr.py`,
which logs each case as it ends). Prints a Markdown table (OK / NON-STRICT /
INFORMATIONAL / other, per job, and the ids of any case not OK or INFORMATIONAL)
and writes it with the raw rows to DIR/summary.json.

wstest needs Python 2.7 (`--python2`, default `python2.7`) with autobahntestsuite
installed into `--abt-site` (see tests/autobahn/README.md). Not part of `make
test`: the whole grid takes about an hour per job on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DRIVERS = ("anyio-asyncio", "anyio-uvloop", "anyio-trio", "threaded")
CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*")
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ends a job's process and everything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def run_job(side: str, driver: str, options: argparse.Namespace) -> dict[str, Any]:
    name = f"{side}-{driver}"
    out = Path(options.out) / name
    out.mkdir(parents=True, exist_ok=True)
    caselog = out / "cases.jsonl"
    caselog.unlink(missing_ok=True)
    port = free_port()
    env = dict(os.environ, CASELOG=str(caselog), ABT_SITE=options.abt_site)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    agent = f"socker-{driver}"
    wstest = [options.python2, str(HERE / "wstest_incr.py")]
    spec_path = str(out / "spec.json")
    began = time.monotonic()
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        if side == "server":
            helpers.append(
                start(
                    [sys.executable, str(HERE / "echo_server.py"), driver, str(port)],
                    out / "echo_server.log",
                    env,
                )
            )
            wait_listening(port, 30)
            spec = {
                "outdir": str(out / "reports"),
                "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}"}],
                "cases": options.cases,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
            (out / "spec.json").write_text(json.dumps(spec))
            main = start(
                [*wstest, "-m", "fuzzingclient", "-s", spec_path],
                out / "wstest.log",
                env,
            )
        else:
            spec = {
                "url": f"ws://127.0.0.1:{port}",
                "outdir": str(out / "reports"),
                "cases": options.cases,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
            (out / "spec.json").write_text(json.dumps(spec))
            helpers.append(
                start(
                    [*wstest, "-m", "fuzzingserver", "--webport", "0", "-s", spec_path],
                    out / "wstest.log",
                    env,
                )
            )
            wait_listening(port, 60)
            main = start(
                [
                    sys.executable,
                    str(HERE / "client_runner.py"),
                    driver,
                    f"ws://127.0.0.1:{port}",
                    agent,
                ],
                out / "client.log",
                env,
            )
        helpers.append(main)
        try:
            code: int | None = main.wait(options.timeout)
        except subprocess.TimeoutExpired:
            code = None  # cut at its bound: the cases logged so far still count
    finally:
        for process in reversed(helpers):
            stop(process)
    lines = caselog.read_text().splitlines() if caselog.exists() else []
    rows = [json.loads(line) for line in lines]
    return {
        "side": side,
        "driver": driver,
        "exit": code,
        "seconds": round(time.monotonic() - began),
        "rows": rows,
    }


def listed(ids: list[str]) -> str:
    return f" ({', '.join(ids)})" if ids else ""


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| side | driver | cases run | OK | NON-STRICT | INFORMATIONAL | other | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        rows = result["rows"]
        counts = collections.Counter(row["behavior"] for row in rows)
        bad = [
            row["id"]
            for row in rows
            if row["behavior"] not in PASSING or row["behaviorClose"] not in PASSING
        ]
        informational = [row["id"] for row in rows if row["behavior"] == "INFORMATIONAL"]
        lines.append(
            f"| {result['side']} | {result['driver']} | {len(rows)} | {counts['OK']} | "
            f"{counts['NON-STRICT']} | {counts['INFORMATIONAL']}{listed(informational)} | "
            f"{len(bad)}{listed(bad)} | {result['seconds'] / 60:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", default="server,client")
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3000.0, help="seconds per job")
    parser.add_argument("--out", default="autobahn-reports")
    parser.add_argument("--python2", default="python2.7")
    parser.add_argument("--abt-site", default="/tmp/abt-env/lib/python2.7/site-packages")
    options = parser.parse_args()
    options.cases = options.cases.split(",")
    jobs = [
        (side, driver) for side in options.side.split(",") for driver in options.drivers.split(",")
    ]
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        results = list(pool.map(lambda job: run_job(*job, options), jobs))
    text = table(results)
    print(text)
    Path(options.out, "summary.json").write_text(json.dumps(results, indent=1))
    failed = any(
        row["behavior"] not in PASSING or row["behaviorClose"] not in PASSING
        for result in results
        for row in result["rows"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
