"""Ingestion in this process at scale: streaming reads, exactly-once and atomic tables, resume, bad corpora.

Real LanceDB tables and the tiny random-weight BERT GGUF (64-d), so 300,000-row corpora take seconds; a real
``embellama ingest`` child process SIGKILLed mid-run, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("lancedb")

from embellama import ConfigurationError, InvalidInputError  # noqa: E402
from embellama.ingest.corpus import iter_corpus  # noqa: E402
from embellama.ingest.lancedb import LanceWriter, staging_name  # noqa: E402
from embellama.ingest.pipeline import ingest  # noqa: E402
from tests.fixtures.ingest_corpora import table_ids, table_names, text, tiny_bert, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_bert()


def test_jsonl_streams_in_bounded_batches_with_lines_of_any_size(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 2000)
    big = "word " * 1_000_000  # a 5 MB line: more than pyarrow's default 1 MB JSON block, and its 4 MB default
    with corpus.open("a") as f:
        f.write("\n" + json.dumps({"id": "big", "text": big, "n": -1}) + "\n\n")
    batches = list(iter_corpus(corpus, batch_rows=300, block_bytes=1 << 16))
    assert max(b.num_rows for b in batches) <= 300 and sum(b.num_rows for b in batches) == 2001
    assert batches[-1].column("text")[-1].as_py() == big  # blank lines skipped, the long one whole
    assert {b.schema for b in batches} == {batches[0].schema}


def test_parquet_and_directories_stream_with_row_numbers_as_ids(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(3):
        pq.write_table(pa.table({"text": [text(i) for i in range(k * 100, (k + 1) * 100)]}), folder / f"p{k}.parquet")
    batches = list(iter_corpus(folder, batch_rows=64))
    assert max(b.num_rows for b in batches) <= 64
    assert [v for b in batches for v in b.column("id").to_pylist()] == [str(i) for i in range(300)]
    (folder / "x.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(ConfigurationError, match="mixes JSON lines and Parquet"):
        list(iter_corpus(folder))


def test_reserved_and_missing_columns_are_refused_before_any_table(tiny: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    for column in ("embedding", "embedding_error", "vector", "metadata", "doc_id"):
        corpus = write_jsonl(tmp_path / f"{column}.jsonl", 0, 3, **{column: 1})
        with pytest.raises(ConfigurationError, match=rf"column\(s\) \['{column}'\], which the ingestion writes"):
            ingest(corpus, db, model_path=tiny, pooling="mean")
    corpus = write_jsonl(tmp_path / "ids.jsonl", 0, 3)
    with pytest.raises(ConfigurationError, match=r"\['id'\]"):  # 'id' is the store's column when ids come from 'n'
        ingest(corpus, db, model_path=tiny, pooling="mean", id_column="n")
    with pytest.raises(ConfigurationError, match=r"no column 'body'; its columns are \['id', 'text', 'n'\]"):
        ingest(corpus, db, model_path=tiny, pooling="mean", text_column="body")
    assert not db.exists() or table_names(db) == []


def _corrupt_line_run(tiny: Path, tmp_path: Path, rows: int) -> None:
    bad = rows // 2  # 0-based: line rows // 2 + 1
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, rows, bad_rows={bad: '{"id": "broken", "text": '})
    with pytest.raises(InvalidInputError, match=rf"c\.jsonl:{bad + 1}: not a JSON object"):
        list(iter_corpus(corpus))
    db = tmp_path / "db"
    report = ingest(corpus, db, model_path=tiny, pooling="mean", on_error="collect", batch_size=512)
    assert list(report.errors) == [f"{corpus}:{bad + 1}"]
    ids = table_ids(db, "documents")
    assert report.rows == rows and report.written == report.table_rows == len(ids) == len(set(ids)) == rows - 1
    assert set(ids) == {f"doc-{i}" for i in range(rows) if i != bad}
    assert table_names(db) == ["documents"]  # the staging table is gone


def test_a_corrupt_line_is_named_or_skipped(tiny: Path, tmp_path: Path) -> None:
    _corrupt_line_run(tiny, tmp_path, 10_000)  # line 5,001 of 10,000


@pytest.mark.stress
def test_a_corrupt_line_at_row_150001_of_300000(tiny: Path, tmp_path: Path) -> None:
    _corrupt_line_run(tiny, tmp_path, 300_000)


def test_writes_are_idempotent_on_the_id(tiny: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 3000)
    db = tmp_path / "db"
    first = ingest(corpus, db, model_path=tiny, pooling="mean", mode="append")
    again = ingest(
        corpus, db, model_path=tiny, pooling="mean", mode="append"
    )  # a rerun without --resume: embedded, not written
    assert (first.written, first.table_rows, first.duplicates) == (3000, 3000, 0)
    assert (again.written, again.table_rows, again.duplicates) == (0, 3000, 3000)
    resumed = ingest(corpus, db, model_path=tiny, pooling="mean", mode="append", resume=True)  # not even embedded
    assert (resumed.rows, resumed.skipped, resumed.written, resumed.table_rows) == (0, 3000, 0, 3000)
    assert sorted(table_ids(db, "documents")) == sorted(f"doc-{i}" for i in range(3000))


def test_duplicate_ids_in_the_corpus_are_reported_and_kept_once(tiny: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 500)
    with corpus.open("a") as f:  # ids 0..99 again, one in the same write buffer, the rest after
        f.writelines(json.dumps({"id": f"doc-{i}", "text": "a second row", "n": i}) + "\n" for i in range(100))
    report = ingest(corpus, tmp_path / "db", model_path=tiny, pooling="mean")
    assert (report.rows, report.written, report.table_rows, report.duplicates) == (600, 500, 500, 100)
    ids = table_ids(tmp_path / "db", "documents")
    assert len(ids) == len(set(ids)) == 500


def test_overwrite_is_visible_only_once_complete(tiny: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    ingest(write_jsonl(tmp_path / "old.jsonl", 0, 500), db, model_path=tiny, pooling="mean")
    new = write_jsonl(tmp_path / "new.jsonl", 10_000, 16_000, bad_rows={14_500: '{"id": "doc-14500", "text": null}'})
    with pytest.raises(InvalidInputError, match="row id='doc-14500'"):  # a crash 75% of the way through
        ingest(new, db, model_path=tiny, pooling="mean", mode="overwrite", write_rows=1000)
    ids = table_ids(db, "documents")
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(500))  # the old table, untouched
    assert staging_name("documents") in table_names(db)  # the partial new one, invisible
    write_jsonl(new, 10_000, 16_000)  # fixed
    report = ingest(new, db, model_path=tiny, pooling="mean", mode="overwrite", resume=True, write_rows=1000)
    assert report.skipped >= 4000 and report.rows + report.skipped == 6000  # the staged rows were not redone
    ids = table_ids(db, "documents")
    assert report.table_rows == len(ids) == len(set(ids)) == 6000 and min(ids) == "doc-10000"
    assert table_names(db) == ["documents"]


def test_a_crashed_create_leaves_no_table_and_does_not_block_a_rerun(tiny: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 3000, bad_rows={2400: '{"id": "x", "text": null}'})
    with pytest.raises(InvalidInputError):
        ingest(corpus, db, model_path=tiny, pooling="mean", write_rows=500)
    assert "documents" not in table_names(db) and staging_name("documents") in table_names(db)
    report = ingest(corpus, db, model_path=tiny, pooling="mean", on_error="collect")  # starts over (no resume)
    assert (report.written, report.table_rows, list(report.errors)) == (2999, 2999, ["x"])


def test_a_number_where_the_corpus_has_text_is_a_bad_line(tiny: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 50, bad_rows={20: '{"id": "x", "text": 3}'})
    with pytest.raises(InvalidInputError, match=r"c\.jsonl:21: column 'text' is int64, but string"):
        list(iter_corpus(corpus))


def test_compaction_leaves_one_version_and_few_fragments(tiny: Path, tmp_path: Path) -> None:
    import lancedb

    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 3000)
    db = tmp_path / "db"
    ingest(corpus, db, model_path=tiny, pooling="mean", write_rows=1000)  # 3 commits, compacted, published
    table = lancedb.connect(str(db)).open_table("documents")
    assert len(table.list_versions()) == 1 and len(table.to_lance().get_fragments()) == 1
    ingest(corpus, db, model_path=tiny, pooling="mean", mode="overwrite", compact=False, write_rows=1000)
    table = lancedb.connect(str(db)).open_table("documents")
    assert len(table.list_versions()) == 2 and len(table.to_lance().get_fragments()) == 3  # the old version stays
    assert table.count_rows() == 3000
    writer = LanceWriter(db, "documents", mode="append")
    assert writer.close() == 3000


def test_driver_sigkilled_mid_run_then_resumed(tiny: Path, tmp_path: Path) -> None:
    rows = 12_000
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, rows)
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "embellama.cli", "ingest", str(corpus), "--db", str(db), "-m", str(tiny),
           "--pooling", "mean", "-q", "--write-rows", "1000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        staged = 0
        deadline = time.monotonic() + 120
        while staged < 3000 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if staging_name("documents") in table_names(db):
                staged = len(table_ids(db, staging_name("documents")))
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "documents" not in table_names(db)  # a killed create publishes nothing
    assert 3000 <= len(table_ids(db, staging_name("documents"))) < rows
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already in the table, not embedded again" in done.stderr
    ids = table_ids(db, "documents")
    assert len(ids) == len(set(ids)) == rows and f"the table holds {rows} rows" in done.stderr
