"""Ray's native Lance sink: an embedded dataset written with lance-ray's write_lance (one commit), read back by
LanceDB and by LangChain's LanceDB store, on a real local Ray cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the extra 'ray'
pytest.importorskip("lance_ray")
lancedb = pytest.importorskip("lancedb")

from embellama import ConfigurationError, EmbeddingEngine  # noqa: E402
from embellama.ingest.lance_sink import table_uri, write_table  # noqa: E402
from embellama.ingest.ray import embed_dataset  # noqa: E402
from tests.conftest import MODEL_NAME  # noqa: E402
from tests.fixtures.ray_cluster import ray_environment  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    ray_environment()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def test_an_embedded_dataset_written_by_the_native_sink_is_one_complete_table(
    local_ray: None, model_path: Path, engine: EmbeddingEngine, tmp_path: Path
) -> None:
    rows = [
        {"id": f"doc-{i}", "text": f"record {i} about the {['tide', 'wind', 'rain'][i % 3]}", "shard": i % 5}
        for i in range(900)
    ]
    ds = embed_dataset(ray.data.from_items(rows, override_num_blocks=6), model_path=model_path, num_actors=2)
    db = tmp_path / "db"
    assert write_table(ds, db=db, table="docs") == 900
    table = lancedb.connect(str(db)).open_table("docs")
    data = table.to_arrow()
    assert sorted(data.column("id").to_pylist()) == sorted(r["id"] for r in rows)  # every id once
    assert len(table.list_versions()) == 1  # one commit for the whole job
    assert data.schema.field("vector").type.list_size == 384
    assert data.column("metadata").combine_chunks().field("shard").to_pylist()[:1] != [None]
    query = np.asarray(engine.embed_batch(MODEL_NAME, [rows[42]["text"]], output="numpy"))[0]
    hit = table.search(query).limit(1).to_list()[0]
    assert hit["id"] == "doc-42" and hit["_distance"] < 1e-4
    # the stores read it as they read a table `embellama ingest` wrote
    community = pytest.importorskip("langchain_community.vectorstores")
    from embellama_integrations.langchain import EmbellamaEmbeddings

    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    store = community.LanceDB(connection=lancedb.connect(str(db)), table_name="docs", embedding=embeddings)
    assert store.similarity_search(rows[42]["text"], k=1)[0].page_content == rows[42]["text"]
    # create refuses an existing table; append adds
    with pytest.raises(ConfigurationError, match="already exists"):  # lance-ray alone would write into it
        write_table(ds, db=db, table="docs")
    with pytest.raises(ConfigurationError, match="does not exist"):
        write_table(ds, db=db, table="other", mode="append")
    assert write_table(ds.limit(100), db=db, table="docs", mode="append") == 1000
    assert Path(table_uri(db, "docs")).is_dir()


def test_a_bad_mode_is_refused_before_anything_runs(local_ray: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mode must be"):
        write_table(ray.data.from_items([{"id": "a"}]), db=tmp_path, table="t", mode="upsert")  # type: ignore[arg-type]
