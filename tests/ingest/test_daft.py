"""Daft, the second engine: a class UDF in Daft's native (local) runner, sized to the CPUs it is given, one model
per process, the output type declared from the GGUF header, and a LanceDB table written with Daft's write_lance."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

daft = pytest.importorskip("daft")  # the extra 'daft'
pa = pytest.importorskip("pyarrow")

from embellama import ConfigurationError, EmbeddingEngine, ModelLoadError, ModelNotFoundError  # noqa: E402
from embellama.ingest.daft import DaftEmbedder, embedder, udf_sizing  # noqa: E402
from embellama.ingest.model_files import driver_model_file  # noqa: E402
from embellama.ingest.workers import embedding_dimensions, process_client, process_engine  # noqa: E402
from tests.conftest import MODEL_NAME  # noqa: E402

pytestmark = pytest.mark.timeout(240)

TEXTS = [f"note {i}: the {['harbour', 'orchard', 'glacier', 'market'][i % 4]} at {i % 24} o'clock" for i in range(400)]


def _local(engine: EmbeddingEngine, texts: list[str]) -> np.ndarray:
    return np.asarray(engine.embed_batch(MODEL_NAME, texts, output="numpy"))


def test_embedding_dimensions_reads_the_header_and_honours_dimensions(model_path: Path, tmp_path: Path) -> None:
    assert embedding_dimensions(model_path) == 384
    assert embedding_dimensions(model_path, dimensions=128) == 128
    with pytest.raises(ConfigurationError, match="exceeds the model's 384"):
        embedding_dimensions(model_path, dimensions=385)
    with pytest.raises(ConfigurationError, match="integer >= 1"):
        embedding_dimensions(model_path, dimensions=0)
    with pytest.raises(ModelNotFoundError):
        embedding_dimensions(tmp_path / "absent.gguf")
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        embedding_dimensions(tmp_path / "notes.gguf")


def test_udf_sizing_shares_the_cores_among_the_instances() -> None:
    assert udf_sizing(None, None, usable=8) == (1, 8)
    assert udf_sizing(4, None, usable=8) == (4, 2)
    assert udf_sizing(3, None, usable=2) == (3, 1)  # never below one CPU
    assert udf_sizing(None, 2, usable=8) == (4, 2)
    assert udf_sizing(2, 3, usable=8) == (2, 3)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigurationError):
            udf_sizing(bad, None)  # type: ignore[arg-type]


def test_one_model_per_process_sized_to_the_instance(model_path: Path) -> None:
    model = driver_model_file(model_path)
    first = DaftEmbedder(model, 1, 384, None, "raise", {})
    second = DaftEmbedder(model, 1, 384, None, "raise", {})
    assert first.client is second.client  # a second UDF instance in this process reuses the loaded model
    assert (first.client.info.n_workers, first.client.info.n_threads) == (1, 1)
    wider = DaftEmbedder(model, 2, 384, None, "raise", {})
    assert (wider.client.info.n_workers, wider.client.info.n_threads) == (2, 1)
    assert process_client(model_path, cpus=2) is wider.client
    assert sorted(info.n_workers for info in process_engine().models.values()) == [1, 2]


def test_a_missing_model_fails_when_the_query_is_planned(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        embedder(tmp_path / "absent.gguf")
    with pytest.raises(ConfigurationError, match="not an embellama option"):
        embedder(tmp_path / "absent.gguf", colour="blue")


def test_daft_vectors_equal_the_local_engines_and_the_type_is_declared(
    model_path: Path, engine: EmbeddingEngine
) -> None:
    embed = embedder(model_path, concurrency=2, batch_size=64)
    df = daft.from_pydict({"id": list(range(len(TEXTS))), "text": TEXTS})
    df = df.with_column("embedding", embed(df["text"]))
    # the output type is known before anything runs
    assert df.schema()["embedding"].dtype == daft.DataType.fixed_size_list(daft.DataType.float32(), 384)
    out = df.to_arrow().sort_by("id")
    assert out.column("id").to_pylist() == list(range(len(TEXTS)))
    got = np.stack(out.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert float(np.sum(got * _local(engine, TEXTS), axis=1).min()) >= 0.9999


class _Layout(DaftEmbedder):
    """The embedder's state, reporting where it runs and how it is sized instead of embedding."""

    @daft.method.batch(return_dtype=daft.DataType.string(), batch_size=20)
    def report(self, texts: Any) -> list[str]:
        info = self.client.info
        return [f"{os.getpid()}:{info.n_workers}x{info.n_threads}:{len(process_engine().models)}"] * len(texts)


def test_each_udf_process_takes_its_share_of_the_cpus(model_path: Path) -> None:
    instances, cpus = udf_sizing(2, None, usable=2)
    udf = daft.cls(_Layout, cpus=cpus, max_concurrency=instances, use_process=True)
    model = driver_model_file(model_path)
    df = daft.from_pydict({"text": TEXTS[:200]}).into_partitions(4)
    rows = df.select(udf(model, cpus, 384, None, "raise", {}).report(df["text"]).alias("where")).to_pydict()["where"]
    pids = {row.split(":")[0] for row in rows}
    assert 1 <= len(pids) <= instances and str(os.getpid()) not in pids  # in UDF processes, not here
    assert {row.split(":", 1)[1] for row in rows} == {"1x1:1"}  # one CPU each, one model per process


def test_write_lance_gives_a_table_lancedb_queries(model_path: Path, engine: EmbeddingEngine, tmp_path: Path) -> None:
    lancedb = pytest.importorskip("lancedb")
    embed = embedder(model_path, concurrency=1)
    df = daft.from_pydict({"id": [str(i) for i in range(len(TEXTS))], "text": TEXTS})
    df.with_column("vector", embed(df["text"])).write_lance(str(tmp_path / "db" / "docs.lance"))
    table = lancedb.connect(str(tmp_path / "db")).open_table("docs")
    assert table.count_rows() == len(TEXTS)
    query = _local(engine, [TEXTS[7]])[0]
    hit = table.search(query).limit(1).to_list()[0]
    assert hit["id"] == "7" and hit["_distance"] < 1e-4
    shutil.rmtree(tmp_path / "db")
