"""Shipping a model to a node that lacks it: a 1 GiB file through Ray's object store, to a real second node.

``python -m benchmarks.model_shipping [--mib 1024] [--rounds 2] [--out benchmarks/results/model-shipping.md]``

Needs root (the second node runs ``ray start`` in its own mount namespace with a tmpfs over the model's folder, see
``tests/fixtures/ray_nodes.py``), so it is a benchmark, not a test. The file is a dummy: the GGUF magic followed by
random
bytes (shipping moves and hashes bytes; nothing loads it). Timed, per round, in the driver:

- ``fingerprint (driver)``: the driver's whole-file hash of a file it has not hashed before (``driver_model_file``);
- ``ship``: ``ship()``, the file read and put into the head's object store in 64 MiB chunks;
- ``first check``: ``check_nodes()`` with the second node lacking the file: it pulls the chunks from the head's
  object store, writes ``$EMBELLAMA_CACHE/shipped/...`` and verifies the hash (the head's own check included);
- ``second check``: ``check_nodes()`` again, the copy in place (what every later job, or actor, pays).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _dummy(path: Path, mib: int) -> None:
    rng = os.urandom
    with open(path, "wb") as f:
        f.write(b"GGUF")
        for _ in range(mib):
            f.write(rng(1 << 20))


def _round(mib: int, root: Path) -> dict[str, float]:
    import ray
    import ray.cluster_utils

    from embellama.ingest.model_files import check_nodes, driver_model_file, ship
    from tests.fixtures.ray_cluster import ray_environment
    from tests.fixtures.ray_nodes import NamespacedNode

    models = root / "models"
    models.mkdir(parents=True)
    path = models / "big.gguf"
    _dummy(path, mib)
    ray_environment()
    head = ray.cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 1536 << 20},
    )
    node = None
    try:
        ray.init(address=head.address, log_to_driver=False)
        known = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        cache = root / "worker-cache"
        node = NamespacedNode(head.address, models, env={"EMBELLAMA_CACHE": str(cache)})
        node.wait_joined(known)
        t0 = time.perf_counter()
        model = driver_model_file(path)
        t1 = time.perf_counter()
        model = ship(model)
        t2 = time.perf_counter()
        paths = check_nodes(model)
        t3 = time.perf_counter()
        check_nodes(model)
        t4 = time.perf_counter()
        copies = list((cache / "shipped").glob("*.gguf"))
        assert len(copies) == 1 and copies[0].stat().st_size == model.size, copies
        assert str(copies[0]) in paths.values(), paths
    finally:
        ray.shutdown()
        if node is not None:
            node.stop()
        head.shutdown()
    return {
        "fingerprint (driver)": t1 - t0,
        "ship": t2 - t1,
        "first check": t3 - t2,
        "second check": t4 - t3,
    }


def main() -> int:
    """Run the rounds; print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    runs: list[dict[str, float]] = []
    for _ in range(ns.rounds):
        root = Path(tempfile.mkdtemp(prefix="ship-", dir="/tmp"))
        os.environ["EMBELLAMA_CACHE"] = str(root / "driver-cache")  # a fresh fingerprint cache each round
        try:
            runs.append(_round(ns.mib, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(runs[-1], flush=True)
    lines = [f"A {ns.mib} MiB file, a head and one namespaced worker node on one machine (loopback transfer).", ""]
    lines += ["| step | seconds (median, min-max) | MiB/s |", "|---|---|---|"]
    for step in runs[0]:
        values = [r[step] for r in runs]
        median = statistics.median(values)
        lines.append(f"| {step} | {median:.2f} ({min(values):.2f}-{max(values):.2f}) | {ns.mib / median:.0f} |")
    total = statistics.median(r["ship"] + r["first check"] for r in runs)
    lines += ["", f"Shipping end to end (ship + first check): {total:.2f} s, {ns.mib / total:.0f} MiB/s."]
    table = "\n".join(lines)
    print(table)
    if ns.out is not None:
        ns.out.write_text(f"{ns.rounds} rounds, each with a fresh cluster, file and caches.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
