"""What the machine did while a benchmark measured: the CPU other processes took.

The machine is shared (2 cores, several people's work): a figure taken while
something else ran is slower for reasons that are not the code measured. These
read /proc so a benchmark can say how much else ran in its window, and how long
its own servers waited for a CPU.
"""

from __future__ import annotations

import os
import shutil
import sys

from benchmarks.client import cpu_seconds

__all__ = ["children", "cpu_seconds", "machine_seconds", "run_queue_seconds", "with_parent"]


def run_queue_seconds(pid: int) -> float:
    """Time this process spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_seconds() -> tuple[float, float, float]:
    """(busy, interrupts, steal) CPU seconds of the whole machine so far (/proc/stat).
    Interrupt time (mostly loopback's softirq: the benchmark's own traffic) is
    counted apart: the kernel charges it to no process. /proc/stat is sampled per
    tick, so `busy` minus the processes' own (exact) times is approximate."""
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, (irq + softirq) / tick, steal / tick


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a supervisor's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def with_parent() -> list[str]:
    """A command prefix under which a child gets SIGTERM when the thread that started it
    ends (util-linux's `setpriv --pdeathsig`, Linux's PR_SET_PDEATHSIG; it execs the
    command, so the pid stays the child's), so a benchmark killed with SIGKILL leaves
    no server behind. Nothing where setpriv is missing. Start such children from a
    thread that lives as long as they should (the benchmark's main thread)."""
    if shutil.which("setpriv") and sys.platform.startswith("linux"):
        return ["setpriv", "--pdeathsig", "TERM"]
    return []
