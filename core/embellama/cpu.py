"""What this process may run on: usable cores (affinity and cgroup CPU quota), and how many of them nothing else
is running on right now."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CgroupMount",
    "cgroup_cpu_limit",
    "cgroup_mounts",
    "cpu_flags",
    "idle_cores",
    "own_cgroups",
    "parse_cfs_quota",
    "parse_cpu_max",
    "usable_cores",
]


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, or its cgroup's CPU quota if smaller (at least 1).

    A container limited by a quota (``docker --cpus=2``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``) still sees every host core in its affinity mask; planning a worker and a thread per
    host core there makes llama.cpp's spinning threads fight over the quota. The quota is rounded up
    (1.5 CPUs count as 2) and read once per process.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    quota = _own_cpu_limit()
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota - 1e-9)))


@functools.cache
def _own_cpu_limit() -> float | None:
    return cgroup_cpu_limit()


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` file (``"200000 100000"`` → 2.0; ``"max 100000"`` → None)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1 → None)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy: v2 (``version=2``) or a v1 hierarchy that holds the ``cpu`` controller."""

    version: int
    root: str
    """The hierarchy's path that is mounted (``/`` unless only a sub-tree is visible)."""
    mount_point: Path


def cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup v2 hierarchies and v1 ``cpu`` hierarchies in a ``/proc/self/mountinfo`` text."""
    mounts = []
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        if not sep:
            continue
        left, right = fields.split(), rest.split()
        if len(left) < 5 or len(right) < 3:
            continue
        fstype, options = right[0], right[2].split(",")
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, left[3], Path(_unescape(left[4]))))
        elif fstype == "cgroup" and "cpu" in options:
            mounts.append(CgroupMount(1, left[3], Path(_unescape(left[4]))))
    return mounts


def own_cgroups(proc_cgroup: str) -> dict[int, str]:
    """The process's cgroup path per version from a ``/proc/self/cgroup`` text: 2 from the ``0::`` line, 1 from
    the v1 line whose controllers include ``cpu``."""
    paths: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    return paths


def cgroup_cpu_limit(
    proc_cgroup: str | Path = "/proc/self/cgroup", mountinfo: str | Path = "/proc/self/mountinfo"
) -> float | None:
    """The CPUs this process's cgroups allow (the tightest quota on its cgroup and every ancestor, v2 and v1),
    or None when there is no quota (or no cgroup information: not Linux, unreadable files)."""
    try:
        paths = own_cgroups(Path(proc_cgroup).read_text())
        mounts = cgroup_mounts(Path(mountinfo).read_text())
    except OSError:
        return None
    limits = []
    for mount in mounts:
        path = paths.get(mount.version)
        if path is None:
            continue
        limit = _hierarchy_limit(mount, path)
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def _hierarchy_limit(mount: CgroupMount, path: str) -> float | None:
    """The tightest quota from the process's cgroup up to the mount point of one hierarchy."""
    relative = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root.rstrip("/") + "/")):
        relative = path[len(mount.root) :]
    directory = mount.mount_point / relative.lstrip("/")
    if not directory.is_dir():  # a cgroup namespace shows "/" or a path outside the mount: use the mount's own
        directory = mount.mount_point
    limits = []
    while True:
        try:
            if mount.version == 2:
                limit = parse_cpu_max((directory / "cpu.max").read_text())
            else:
                limit = parse_cfs_quota(
                    (directory / "cpu.cfs_quota_us").read_text(), (directory / "cpu.cfs_period_us").read_text()
                )
        except (OSError, ValueError):
            limit = None
        if limit is not None:
            limits.append(limit)
        if directory == mount.mount_point or mount.mount_point not in directory.parents:
            break
        directory = directory.parent
    return min(limits) if limits else None


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


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
