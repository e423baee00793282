"""Core counting under a cgroup CPU quota: the parsers on sample files, and a child in a real cgroup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from embellama.cpu import cgroup_cpu_limit, cgroup_mounts, own_cgroups, parse_cfs_quota, parse_cpu_max

V1_CPU = Path("/sys/fs/cgroup/cpu")


def test_parse_cpu_max() -> None:
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("50000") == 0.5  # period defaults to the kernel's 100 ms


def test_parse_cfs_quota() -> None:
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("400000\n", "100000\n") == 4.0
    assert parse_cfs_quota("25000", "100000") == 0.25


def test_own_cgroups_v1_and_v2_lines() -> None:
    text = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n0::/system.slice/x.scope\n"
    assert own_cgroups(text) == {1: "/docker/abc", 2: "/system.slice/x.scope"}
    assert own_cgroups("3:cpuset:/\n2:cpuacct:/\n") == {}  # cpuacct alone is not cpu


def _tree(tmp_path: Path, proc_cgroup: str, mountinfo: str) -> tuple[Path, Path]:
    (tmp_path / "cgroup").write_text(proc_cgroup)
    (tmp_path / "mountinfo").write_text(mountinfo.replace("@", str(tmp_path)))
    return tmp_path / "cgroup", tmp_path / "mountinfo"


def test_v2_quota_on_own_cgroup_and_ancestor(tmp_path: Path) -> None:
    own = tmp_path / "fs" / "app.slice" / "svc"
    own.mkdir(parents=True)
    (tmp_path / "fs" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "fs" / "app.slice" / "cpu.max").write_text("150000 100000\n")  # the parent's limit binds
    (own / "cpu.max").write_text("400000 100000\n")
    files = _tree(tmp_path, "0::/app.slice/svc\n", "30 1 0:26 / @/fs rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup_cpu_limit(*files) == 1.5


def test_v2_container_namespace_reads_mount_root(tmp_path: Path) -> None:
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "cpu.max").write_text("200000 100000\n")
    # inside a cgroup namespace the process sees "/" as its cgroup
    files = _tree(tmp_path, "0::/\n", "30 1 0:26 / @/fs rw - cgroup2 cgroup2 rw\n")
    assert cgroup_cpu_limit(*files) == 2.0


def test_v1_docker_mount_of_a_subtree(tmp_path: Path) -> None:
    fs = tmp_path / "cpu,cpuacct"
    fs.mkdir()
    (fs / "cpu.cfs_quota_us").write_text("300000\n")
    (fs / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo = "40 31 0:35 /docker/abc @/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    files = _tree(tmp_path, "5:cpu,cpuacct:/docker/abc\n0::/\n", mountinfo)
    assert cgroup_mounts(files[1].read_text())[0].root == "/docker/abc"
    assert cgroup_cpu_limit(*files) == 3.0


def test_no_quota_and_no_files(tmp_path: Path) -> None:
    fs = tmp_path / "cpu"
    fs.mkdir()
    (fs / "cpu.cfs_quota_us").write_text("-1\n")
    (fs / "cpu.cfs_period_us").write_text("100000\n")
    files = _tree(tmp_path, "1:cpu:/\n", "32 31 0:29 / @/cpu rw - cgroup cgroup rw,cpu\n")
    assert cgroup_cpu_limit(*files) is None
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing") is None


_CHILD = """
import json
from embellama.config import ModelConfig
from embellama.cpu import usable_cores
cfg = ModelConfig(model_path="x.gguf")
print(json.dumps({"cores": usable_cores(), "workers": cfg.n_workers, "threads": cfg.threads}))
"""


def _plan(cgroup: Path | None) -> dict[str, int]:
    def enter() -> None:  # in the child, before exec: join the cgroup
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    out = subprocess.run(
        [sys.executable, "-c", _CHILD], preexec_fn=enter, capture_output=True, text=True, timeout=120, check=True
    )
    plan: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return plan


@pytest.fixture
def quota_cgroup() -> Iterator[Path]:
    """A fresh child of the v1 ``cpu`` hierarchy (removed afterwards); skips where none can be made."""
    if not (V1_CPU / "cgroup.procs").exists() or not os.access(V1_CPU, os.W_OK):
        pytest.skip("no writable cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    path = V1_CPU / f"embellama-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup: {exc}")
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:  # the child's exit is still being accounted
                time.sleep(0.1)


def test_child_in_a_quota_cgroup_plans_for_the_quota(quota_cgroup: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    if affinity < 2:
        pytest.skip("needs at least 2 usable cores to tell a 1-CPU quota from the affinity mask")
    free = _plan(None)
    assert free["cores"] == affinity
    assert free["workers"] * free["threads"] == min(affinity, 4) * (affinity // min(affinity, 4))

    (quota_cgroup / "cpu.cfs_period_us").write_text("100000")
    (quota_cgroup / "cpu.cfs_quota_us").write_text("100000")  # 1 CPU
    assert _plan(quota_cgroup) == {"cores": 1, "workers": 1, "threads": 1}

    (quota_cgroup / "cpu.cfs_quota_us").write_text("50000")  # half a CPU still plans one
    assert _plan(quota_cgroup) == {"cores": 1, "workers": 1, "threads": 1}

    if affinity >= 3:
        (quota_cgroup / "cpu.cfs_quota_us").write_text("150000")  # 1.5 CPUs round up to 2
        assert _plan(quota_cgroup)["cores"] == 2
