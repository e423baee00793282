"""A real second Ray node with its own view of the file system: a worker node started in its own mount namespace.

``ray.cluster_utils.Cluster`` nodes share the test's file system, so a test of "a node that cannot see the model"
cannot fail with them. :class:`NamespacedNode` starts a worker node (as ``Cluster.add_node`` does, in a child
process run with ``python -m tests.ray_nodes``) with ``unshare -m`` (root only) and mounts a
tmpfs over one folder in that namespace: the node (its raylet and every worker process it spawns) sees that folder
empty, or with whatever :meth:`NamespacedNode.put` copies into it, while the test's processes keep seeing the
real folder. Stopped by killing its own process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NamespacedNode", "namespaces_available"]


def namespaces_available() -> str | None:
    """``None`` if this process can make mount namespaces and mount a tmpfs in them, else why not."""
    if os.geteuid() != 0:
        return "mount namespaces need root"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
        capture_output=True,
        timeout=10,
    )
    if probe.returncode != 0:
        return f"cannot mount in a new namespace: {probe.stderr.decode(errors='replace').strip()}"
    return None


_SLOW_START = {"RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180"}
"""Longer waits where Ray allows them (a loaded machine, shared CI cores, starts agents slowly)."""


class NamespacedNode:
    """A Ray worker node joined to ``address`` whose view of ``hidden`` is its own tmpfs.

    Args:
        address: The head's GCS address.
        hidden: Folder the node sees as an empty tmpfs.
        env: Extra environment for the node (and the workers it spawns), e.g. its own ``EMBELLAMA_CACHE``.
        num_cpus: CPUs the node offers. Defaults to 1.
    """

    def __init__(self, address: str, hidden: Path, *, env: dict[str, str] | None = None, num_cpus: int = 1) -> None:
        self.address = address
        self.hidden = hidden
        self.env = {**os.environ, **_SLOW_START, **(env or {})}
        self.num_cpus = num_cpus
        self.node_id: str | None = None
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        # the node is started as ray.cluster_utils.Cluster.add_node starts one (`ray start` adds ~20 s of CLI
        # imports, enough on a loaded machine for the raylet's 15 s wait on its agents to run out)
        launcher = [sys.executable, "-m", "tests.ray_nodes", self.address, str(self.num_cpus)]
        script = f'mount -t tmpfs tmpfs "{self.hidden}" && exec "$@"'
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *launcher],
            env=self.env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: stop() kills exactly what this started
        )

    def wait_joined(self, known: set[str], timeout: float = 90.0, attempts: int = 3) -> str:
        """Wait until a node other than ``known`` is alive in the cluster (restarting the node if it failed to
        start, up to ``attempts`` times); return its node id."""
        import ray

        deadline = time.monotonic() + timeout
        errors: list[str] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                errors.append(f"exit {self.process.returncode}: {err[-1500:]}")
                self.stop()
                if len(errors) >= attempts:
                    break
                self.process = self._start()
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")} - known
            if alive:
                self.node_id = alive.pop()
                return self.node_id
            time.sleep(0.5)
        raise RuntimeError(f"the namespaced node did not join in {timeout} s: {errors}")

    def run(self, *command: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the node's mount namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.process.pid), "-m", *command], check=True, timeout=60, **kwargs
        )

    def put(self, source: Path, name: str) -> None:
        """Copy ``source`` to ``hidden/name`` as the node sees it (the test's processes do not see it)."""
        self.run("cp", str(source), str(self.hidden / name))

    def clear(self) -> None:
        """Empty the node's view of ``hidden``."""
        self.run("sh", "-c", f'rm -rf "{self.hidden}"/* "{self.hidden}"/.[!.]*')

    def stop(self) -> None:
        """Kill the node's process group (its ``ray start``, raylet and workers) and wait for it."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):  # what of the group outlived `ray start` (raylet's workers)
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()


def _run_node(address: str, num_cpus: int) -> None:
    """Start a worker node joined to ``address`` in this process's namespace; block until SIGTERM, then stop it."""
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=address,
        num_cpus=num_cpus,
        num_gpus=0,
        object_store_memory=1536 << 20,  # room for a shipped 1 GiB model (benchmarks/model_shipping.py)
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.2)
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    _run_node(sys.argv[1], int(sys.argv[2]))
