"""What the benchmarks share about the machine: pinning, limits, and CPU and memory read
from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Callable

__all__ = [
    "child_setup",
    "core_busy",
    "core_ticks",
    "pin",
    "proc_cpu",
    "proc_cpu_split",
    "proc_status_bytes",
    "raise_fd_limit",
    "self_cpu",
]


def pin(cpu: int) -> bool:
    """Pin this process to ``cpu`` if the machine has it; whether it did."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def child_setup(cpu: int) -> Callable[[], None]:
    """A preexec_fn: pin the child to ``cpu`` and have it killed when this process dies."""

    def setup() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return setup


def raise_fd_limit(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE to ``want`` (root may raise the hard limit), else to the hard
    limit; the new soft limit. Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new in ((max(want, soft), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_status_bytes(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core, (busy, total) clock ticks since boot; busy includes irq and softirq.
    Key -1 holds (steal, total) of the whole machine."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu"):
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
            busy = user + nice + system + irq + softirq
            if name == "cpu":
                out[-1] = (steal, busy + idle + iowait + steal)
            else:
                out[int(name[3:])] = (busy, busy + idle + iowait + steal)
    return out


def core_busy(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float:
    """Busy share of ``core`` between two core_ticks() readings."""
    if core not in before or core not in after:
        return float("nan")
    total = after[core][1] - before[core][1]
    return (after[core][0] - before[core][0]) / total if total else float("nan")


def self_cpu() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
