"""Scale-out across nodes: a two-node Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``, one CPU
per node); actors run on both nodes and give the local engine's vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the extra 'ray'; skipped where it is not installed
cluster_utils = pytest.importorskip("ray.cluster_utils")

from embellama import EmbeddingEngine  # noqa: E402
from tests.conftest import MODEL_NAME  # noqa: E402
from tests.fixtures.ray_cluster import WhereEmbedBatch, ray_environment  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[list[str]]:
    """A head and a worker node with one CPU each; yields their node ids."""
    if ray.is_initialized():
        ray.shutdown()
    ray_environment()
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_actors_on_both_nodes_match_the_local_engine(
    two_nodes: list[str], model_path: Path, engine: EmbeddingEngine
) -> None:
    assert len(two_nodes) == 2
    rows = [
        {"id": i, "text": f"passage {i} about the {['sea', 'sky', 'soil'][i % 3]} and its colour"} for i in range(600)
    ]
    ds = ray.data.from_items(rows, override_num_blocks=12).map_batches(
        WhereEmbedBatch,
        fn_constructor_kwargs={"model_path": str(model_path), "cpus": 1},
        batch_size=50,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
    )
    out = ds.take_all()
    assert sorted(row["id"] for row in out) == list(range(600))
    assert {row["node"] for row in out} == set(two_nodes)  # one actor per node: each node's CPU is taken by one
    assert {row["layout"] for row in out} == {"1x1"}
    got = {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in out}
    local = engine.embed_batch(MODEL_NAME, [r["text"] for r in rows], output="numpy")
    cosines = np.sum(np.stack([got[i] for i in range(600)]) * local, axis=1)
    assert float(cosines.min()) >= 0.9999
