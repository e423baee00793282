"""Scale-out on Ray Data: a real local Ray cluster (2 CPUs) started here, the default model, real LanceDB tables
queried through LangChain's and LlamaIndex's stores, and the `embellama ingest` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the extra 'ray' (with pyarrow and lancedb); skipped where it is not installed
pa = pytest.importorskip("pyarrow")
pytest.importorskip("lancedb")

from embellama import ConfigurationError, EmbeddingEngine, InvalidInputError  # noqa: E402
from embellama.cli.main import main  # noqa: E402
from embellama.ingest.lancedb import LanceWriter, append_rows, store_schema  # noqa: E402
from embellama.ingest.pipeline import ingest, read_corpus  # noqa: E402
from embellama.ingest.ray import EmbedBatch, _thread_options, embed_dataset  # noqa: E402
from tests.conftest import MODEL_NAME  # noqa: E402
from tests.fixtures.ray_cluster import WhereEmbedBatch, ray_environment  # noqa: E402

pytestmark = pytest.mark.ray

TOPICS = {
    "cats": "Cats are small domesticated carnivorous mammals that purr and hunt mice.",
    "python": "Python is a programming language with dynamic typing and a large standard library.",
    "paris": "Paris is the capital city of France, built on both banks of the Seine.",
    "coffee": "Coffee is brewed from roasted and ground coffee beans.",
    "volcano": "A volcano erupts molten lava, ash and gases from the crust of the earth.",
}
QUERIES = {
    "cats": "which pet purrs?",
    "python": "a language for writing software",
    "paris": "what is the French capital?",
    "coffee": "a hot drink made from beans",
    "volcano": "hot lava coming out of a mountain",
}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs for this module; yields its address."""
    ray_environment()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _corpus(n: int) -> list[dict[str, Any]]:
    words = ["river", "mountain", "engine", "garden", "market", "signal", "harbor", "library", "forest", "castle"]
    return [
        {"id": f"doc-{i}", "text": f"{words[i % 10]} {words[(i // 10) % 10]} number {i} of the {words[i % 7]} corpus"}
        for i in range(n)
    ]


def _by_id(rows: list[dict[str, Any]], column: str = "embedding") -> dict[str, np.ndarray]:
    return {row["id"]: np.asarray(row[column], dtype=np.float32) for row in rows}


def test_two_actors_embed_every_row_once_like_the_local_engine(
    local_ray: str, model_path: Path, engine: EmbeddingEngine
) -> None:
    rows = _corpus(2000)
    for row in rows:
        row["shard"] = int(row["id"].split("-")[1]) % 4  # metadata rides along with its row
    out = embed_dataset(ray.data.from_items(rows), model_path=model_path, num_actors=2, batch_size=128).take_all()
    ids = [row["id"] for row in out]
    assert len(ids) == 2000 and sorted(ids) == sorted(r["id"] for r in rows)  # every id once
    assert all(row["shard"] == int(row["id"].split("-")[1]) % 4 for row in out)
    got = _by_id(out)
    local = engine.embed_batch(MODEL_NAME, [r["text"] for r in rows], output="numpy")
    ray_vectors = np.stack([got[r["id"]] for r in rows])
    cosines = np.sum(ray_vectors * local, axis=1)
    assert ray_vectors.shape == (2000, 384) and float(cosines.min()) >= 0.9999


def test_actors_size_their_threads_to_their_cpus(local_ray: str, model_path: Path) -> None:
    rows = _corpus(40)
    ds = ray.data.from_items(rows).map_batches(
        WhereEmbedBatch,
        fn_constructor_kwargs={"model_path": str(model_path)},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=2,
    )
    assert {row["layout"] for row in ds.take_all()} == {"2x1"}  # one model instance per CPU Ray gave the actor
    assert _thread_options(4, {"n_gpu_layers": -1}) == {"n_workers": 1, "n_threads": 4}
    assert _thread_options(4, {"n_threads": 2}) == {}  # the user's choice wins
    assert _thread_options(None, {}) == {}  # outside Ray: the engine's defaults


def test_bad_rows_collected_keep_their_row(local_ray: str, model_path: Path) -> None:
    rows = _corpus(300)
    rows[7]["text"] = None
    rows[150]["text"] = "word " * 400  # over 256 tokens, and long_text_mode is "raise" as in local use
    out = embed_dataset(
        ray.data.from_items(rows), model_path=model_path, id_column="id", on_error="collect", num_actors=2
    ).take_all()
    assert len(out) == 300
    bad = {row["id"]: row for row in out if row["embedding_error"] is not None}
    assert set(bad) == {"doc-7", "doc-150"}
    assert all(row["embedding"] is None for row in bad.values())
    assert "row id='doc-7', column 'text': expected str, got NoneType" in bad["doc-7"]["embedding_error"]
    assert "doc-150" in bad["doc-150"]["embedding_error"] and "256" in bad["doc-150"]["embedding_error"]
    good = [row for row in out if row["embedding_error"] is None]
    assert len(good) == 298 and all(len(row["embedding"]) == 384 for row in good)


def test_bad_row_raises_naming_it(local_ray: str, model_path: Path) -> None:
    rows = _corpus(100)
    rows[42]["text"] = None
    ds = embed_dataset(ray.data.from_items(rows), model_path=model_path, id_column="id", num_actors=1)
    with pytest.raises(ray.exceptions.RayTaskError, match=r"row id='doc-42', column 'text': expected str"):
        ds.take_all()


def test_options_are_checked_before_any_actor_starts(local_ray: str, model_path: Path) -> None:
    ds = ray.data.from_items(_corpus(4))
    with pytest.raises(ConfigurationError, match="did you mean n_workers"):
        embed_dataset(ds, model_path=model_path, n_wrokers=2)
    with pytest.raises(ConfigurationError, match="num_actors"):
        embed_dataset(ds, model_path=model_path, num_actors=0)
    with pytest.raises(ConfigurationError, match="text_column"):
        embed_dataset(ds, model_path=model_path, text_column="")
    with pytest.raises(ConfigurationError, match="pooling"):
        embed_dataset(ds, model_path=model_path, pooling="median")
    with pytest.raises(ConfigurationError, match="text column 'body' not in the dataset"):
        EmbedBatch(model_path, text_column="body")(pa.Table.from_pylist(_corpus(2)))


def _topic_corpus(path: Path) -> Path:
    with path.open("w") as f:
        for i in range(60):
            topic = list(TOPICS)[i % 5]
            f.write(json.dumps({"id": f"{topic}-{i}", "text": f"{TOPICS[topic]} (note {i})", "topic": topic}) + "\n")
    return path


def _assert_frameworks_retrieve(db: Path, table: str, model_path: Path) -> None:
    import lancedb
    from langchain_community.vectorstores import LanceDB
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from embellama_integrations.langchain import EmbellamaEmbeddings
    from embellama_integrations.llama_index import EmbellamaEmbedding

    store = LanceDB(
        connection=lancedb.connect(str(db)),
        table_name=table,
        embedding=EmbellamaEmbeddings(model_path=str(model_path)),
        mode="append",
    )
    index = VectorStoreIndex.from_vector_store(
        LanceDBVectorStore(uri=str(db), table_name=table, mode="append"),
        embed_model=EmbellamaEmbedding(model_path=str(model_path)),
    )
    retriever = index.as_retriever(similarity_top_k=3)
    for topic, query in QUERIES.items():
        docs = store.similarity_search(query, k=3)
        assert [d.metadata["topic"] for d in docs] == [topic] * 3, (query, docs)
        assert docs[0].page_content.startswith(TOPICS[topic])
        nodes = retriever.retrieve(query)
        assert [n.node.metadata["topic"] for n in nodes] == [topic] * 3, (query, nodes)
        assert nodes[0].node.get_content().startswith(TOPICS[topic])


def test_lancedb_round_trip_on_ray(local_ray: str, model_path: Path, tmp_path: Path) -> None:
    corpus = _topic_corpus(tmp_path / "corpus.jsonl")
    done: list[tuple[int, int]] = []
    report = ingest(
        corpus,
        tmp_path / "db",
        model_path=model_path,
        ray_address="local",  # already initialised here: the running cluster is used
        batch_size=16,
        progress=lambda d, t: done.append((d, t)),
    )
    assert (report.rows, report.written, report.errors) == (60, 60, {}) and report.texts_per_second > 0
    assert done[-1] == (60, 60)
    _assert_frameworks_retrieve(tmp_path / "db", "documents", model_path)


def test_ingest_raise_and_collect(local_ray: str, model_path: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": f"r{i}", "text": f"text number {i}"} for i in range(20)]
    rows[3]["text"] = None
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(InvalidInputError, match=r"row id='r3'"):
        ingest(corpus, tmp_path / "db", model_path=model_path, ray_address="local", batch_size=8)
    report = ingest(
        corpus, tmp_path / "db", model_path=model_path, ray_address="local", on_error="collect", mode="overwrite"
    )
    assert report.written == 19 and list(report.errors) == ["r3"] and "expected str" in report.errors["r3"]


def test_ingest_locally_without_ray_and_modes(model_path: Path, tmp_path: Path) -> None:
    corpus = _topic_corpus(tmp_path / "corpus.jsonl")
    parquet = tmp_path / "corpus.parquet"
    import pyarrow.parquet as pq

    pq.write_table(read_corpus(corpus).drop_columns(["id"]), parquet)  # no id column: row numbers become ids
    db = tmp_path / "db"
    assert ingest(corpus, db, model_path=model_path, batch_size=7).written == 60
    with pytest.raises(ConfigurationError, match="already exists"):
        ingest(corpus, db, model_path=model_path)
    assert ingest(parquet, db, model_path=model_path, mode="append").written == 60
    import lancedb

    table = lancedb.connect(str(db)).open_table("documents")
    assert table.count_rows() == 120 and "59" in set(table.to_arrow().column("id").to_pylist())
    _assert_frameworks_retrieve(db, "documents", model_path)


def test_ingest_rejects_bad_corpora(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        read_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "c.csv").write_text("text\nhello\n")
    with pytest.raises(ConfigurationError, match=r"\.jsonl or \.parquet"):
        read_corpus(tmp_path / "c.csv")
    (tmp_path / "c.jsonl").write_text('{"body": "hello"}\n')
    with pytest.raises(ConfigurationError, match=r"no column 'text'; its columns are \['body'\]"):
        read_corpus(tmp_path / "c.jsonl")
    (tmp_path / "bad.jsonl").write_text("not json at all\n")
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:1: not a JSON object"):
        read_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigurationError, match="mode must be"):
        LanceWriter(tmp_path / "db", "t", mode="upsert")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="on_error must be"):
        ingest(tmp_path / "c.jsonl", tmp_path / "db", on_error="skip")  # type: ignore[arg-type]


def test_cli_ingest_locally(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "first"}) + "\n" + json.dumps({"id": "b", "text": None}) + "\n")
    db = str(tmp_path / "db")
    assert main(["ingest", str(corpus), "--db", db, "-m", str(model_path), "-q"]) == 2
    assert "row id='b', column 'text': expected str" in capsys.readouterr().err
    assert (
        main(["ingest", str(corpus), "--db", db, "-m", str(model_path), "--skip-bad-rows", "--mode", "overwrite"]) == 0
    )
    err = capsys.readouterr().err
    assert "skipped b:" in err and "ingested 1 of 2 rows" in err


def test_cli_ingest_joins_a_running_cluster(local_ray: str, model_path: Path, tmp_path: Path) -> None:
    corpus = _topic_corpus(tmp_path / "corpus.jsonl")
    proc = subprocess.run(
        [sys.executable, "-m", "embellama.cli", "ingest", str(corpus), "--db", str(tmp_path / "db"),
         "-m", str(model_path), "--ray", local_ray, "--num-actors", "2", "--batch-size", "16"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ingested 60 of 60 rows" in proc.stderr
    _assert_frameworks_retrieve(tmp_path / "db", "documents", model_path)


def test_workers_append_concurrently_to_one_table(model_path: Path, tmp_path: Path) -> None:
    """What each Ray write task does: append its batch to the table the driver created, beside other writers."""
    import threading

    import lancedb

    embedder = EmbedBatch(model_path, id_column="id", on_error="collect")
    corpus = pa.Table.from_pylist([{"id": f"r{i}", "text": f"row {i}", "n": i} for i in range(64)])
    batches = [embedder(corpus.slice(start, 16)) for start in range(0, 64, 16)]
    embedder.client.engine.close()
    writer = LanceWriter(tmp_path / "db", "t")
    name = writer.create_empty(store_schema(corpus.schema, id_column="id", text_column="text", dimensions=384))
    summaries: list[dict[str, Any]] = []

    def write(batch: Any) -> None:
        out = append_rows(
            batch, db=writer.uri, table=name, id_column="id", text_column="text", vector_column="embedding"
        )
        summaries.extend(out.to_pylist())

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s["written"] for s in summaries) == [16, 16, 16, 16] and all(not s["failed"] for s in summaries)
    assert "t" not in lancedb.connect(str(tmp_path / "db")).list_tables().tables  # staged until published
    assert writer.close() == 64
    table = lancedb.connect(str(tmp_path / "db")).open_table("t")
    assert table.count_rows() == 64 and sorted(table.to_arrow().column("id").to_pylist()) == sorted(
        corpus.column("id").to_pylist()
    )
