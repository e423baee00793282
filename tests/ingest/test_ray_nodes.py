"""The same model on every node, on a real two-node Ray cluster whose worker node has its own file system view.

The worker node runs in its own mount namespace (``tests/fixtures/ray_nodes.py``) with a tmpfs over the model's folder,
so
"another model at the same path" and "no file at the path" are real on that node while the driver sees the real
file. Skipped where mount namespaces are unavailable (not root, no ``unshare``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the extra 'ray'
cluster_utils = pytest.importorskip("ray.cluster_utils")
pa = pytest.importorskip("pyarrow")

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from embellama import ConfigurationError, EmbeddingEngine, ModelNotFoundError  # noqa: E402
from embellama.ingest.model_files import driver_model_file, ship  # noqa: E402
from embellama.ingest.ray import EmbedBatch, embed_dataset  # noqa: E402
from tests.conftest import MODEL_NAME  # noqa: E402
from tests.fixtures.ray_cluster import ray_environment  # noqa: E402
from tests.fixtures.ray_nodes import NamespacedNode, namespaces_available  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

TEXTS = [f"passage {i} about the {['sea', 'sky', 'soil', 'city'][i % 4]} and its colour" for i in range(240)]


@dataclass
class Cluster:
    model: Path
    """The driver's model (the head node sees it; the worker node sees its own tmpfs at that folder)."""
    other: Path
    """Another model with the same size (its last MiB of weights zeroed)."""
    node: NamespacedNode
    node_ip: str
    worker_cache: Path
    """The worker node's ``$EMBELLAMA_CACHE``."""


@pytest.fixture(scope="module")
def cluster(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head node (1 CPU) and a namespaced worker node (1 CPU) whose view of the model's folder is its own."""
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("nodes")
    models = root / "models"
    models.mkdir()
    model = models / "model.gguf"
    shutil.copyfile(model_path, model)
    other = root / "other.gguf"
    data = bytearray(model.read_bytes())
    data[-(1 << 20) :] = bytes(1 << 20)
    other.write_bytes(bytes(data))
    if ray.is_initialized():
        ray.shutdown()
    ray_environment()
    head = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = None
    try:
        ray.init(address=head.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        known = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        worker_cache = root / "worker-cache"
        node = NamespacedNode(head.address, models, env={"EMBELLAMA_CACHE": str(worker_cache)})
        node_id = node.wait_joined(known)
        ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
        yield Cluster(model, other, node, ip, worker_cache)
    finally:
        ray.shutdown()
        if node is not None:
            node.stop()
        head.shutdown()


def _on_worker(cluster: Cluster, kwargs: dict[str, Any], texts: list[str]) -> np.ndarray:
    """Build an EmbedBatch on the worker node (as a Ray Data actor would) and embed ``texts`` there."""

    def embed(kwargs: dict[str, Any], texts: list[str]) -> np.ndarray:
        out = EmbedBatch(cpus=1, **kwargs)(pa.table({"text": texts}))
        return np.stack(out.column("embedding").to_numpy(zero_copy_only=False))

    task = ray.remote(num_cpus=0, max_retries=0)(embed).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(cluster.node.node_id, soft=False)
    )
    return np.asarray(ray.get(task.remote(kwargs, texts), timeout=120))


def _local(engine: EmbeddingEngine, texts: list[str]) -> np.ndarray:
    return np.asarray(engine.embed_batch(MODEL_NAME, texts, output="numpy"))


def test_a_path_missing_everywhere_fails_in_the_driver_at_once(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="model file not found"):
        embed_dataset(ray.data.from_items([{"text": "a"}]), model_path=tmp_path / "absent.gguf", num_actors=1)
    assert time.monotonic() - started < 3  # no actor started, no node asked


def test_a_node_with_another_model_at_the_path_fails_the_job_naming_it(
    cluster: Cluster, engine: EmbeddingEngine
) -> None:
    cluster.node.clear()
    cluster.node.put(cluster.other, cluster.model.name)
    # the setup is real: unchecked, that node embeds with the other model (what mixed vector spaces in one table)
    unchecked = _on_worker(cluster, {"model_path": str(cluster.model)}, TEXTS[:8])
    assert float(np.sum(unchecked * _local(engine, TEXTS[:8]), axis=1).min()) < 0.99
    fingerprint = driver_model_file(cluster.model).fingerprint
    expected = (
        rf"node {cluster.node_ip}: {cluster.model} differs from the driver's \(fingerprint \w+ vs {fingerprint}\)"
    )
    # the job fails up front, before any actor starts or any row is embedded
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=expected):
        embed_dataset(ray.data.from_items([{"text": t} for t in TEXTS]), model_path=cluster.model, num_actors=2)
    assert time.monotonic() - started < 30
    # and an actor that starts there later (a node that joined after the check) refuses too
    with pytest.raises(ConfigurationError, match=expected):
        _on_worker(cluster, {"model_file": driver_model_file(cluster.model)}, TEXTS[:8])


def test_a_node_without_the_file_fails_naming_it_or_gets_it_shipped(cluster: Cluster, engine: EmbeddingEngine) -> None:
    cluster.node.clear()
    expected = rf"node {cluster.node_ip}: {cluster.model} missing"
    with pytest.raises(ModelNotFoundError, match=expected):
        embed_dataset(ray.data.from_items([{"text": t} for t in TEXTS]), model_path=cluster.model, num_actors=2)
    with pytest.raises(ModelNotFoundError, match=expected):  # the actor's own check
        _on_worker(cluster, {"model_file": driver_model_file(cluster.model)}, TEXTS[:8])

    rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    ds = embed_dataset(
        ray.data.from_items(rows, override_num_blocks=8),
        model_path=cluster.model,
        num_actors=2,  # one CPU per node: one actor on each
        batch_size=30,
        ship_model=True,
    )
    out = ds.take_all()
    assert sorted(row["id"] for row in out) == list(range(len(TEXTS)))
    got = np.stack([np.asarray(row["embedding"], dtype=np.float32) for row in sorted(out, key=lambda r: r["id"])])
    assert float(np.sum(got * _local(engine, TEXTS), axis=1).min()) >= 0.9999
    # the worker node made its copy once, in its own cache, and it is the driver's file
    copies = list((cluster.worker_cache / "shipped").glob("*.gguf"))
    assert len(copies) == 1 and copies[0].read_bytes() == cluster.model.read_bytes()
    # an actor there now loads the shipped copy
    shipped = ship(driver_model_file(cluster.model))
    again = _on_worker(cluster, {"model_file": shipped}, TEXTS[:8])
    assert float(np.sum(again * _local(engine, TEXTS[:8]), axis=1).min()) >= 0.9999
