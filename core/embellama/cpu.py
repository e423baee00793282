"""What this process may run on: usable cores, and how many of them nothing else is running on right now."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_flags", "idle_cores", "usable_cores"]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Usable cores that no other process is running on right now, at least 0.

    Counts runnable tasks system-wide (``/proc/loadavg``, instantaneous: a 1-minute average would lag behind a
    process that just started) minus this process's own runnable threads (the caller, and llama.cpp threads still
    spinning after a decode). Off Linux it returns 0, so nothing is ever borrowed.
    """
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for stat in os.scandir("/proc/self/task"):
            try:
                with open(os.path.join(stat.path, "stat")) as f:
                    text = f.read()
            except OSError:  # pragma: no cover - the thread exited meanwhile
                continue
            own += text[text.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0
    return max(0, usable_cores() - max(0, running - own))


def cpu_flags() -> set[str]:
    """CPU feature flags the kernel reports (``/proc/cpuinfo``; empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()
