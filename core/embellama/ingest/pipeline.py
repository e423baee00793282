"""Ingest a corpus into LanceDB: read it in bounded batches, embed (in this process or on Ray), write exactly once.

What ``embellama ingest CORPUS --db PATH [--ray ADDRESS]`` runs. The corpus (a JSONL/Parquet file or a directory of
them; one row per document: a text column, an id column — row numbers otherwise, in this process only — and any
metadata columns) is never held whole: in this process :func:`~embellama.ingest.corpus.iter_corpus` yields
it batch by batch; on Ray, Ray Data's readers (``read_json``/``read_parquet``) stream it through the actors of
:func:`~embellama.ingest.ray.embed_dataset` and tasks beside them write each 8,192 rows to the table
(:func:`~embellama.ingest.lancedb.append_rows`), so only counts and failed ids reach the driver
(:func:`ingest_dataset` runs that pipeline on any Ray dataset).

Every write inserts only ids the table does not hold yet (a retried task or a rerun never duplicates a row);
``create`` and ``overwrite`` write into a staging table published in one commit at the end
(:class:`~embellama.ingest.lancedb.LanceWriter`); ``resume=True`` continues an interrupted run, embedding only
the ids not written yet. See ``docs/ingestion.md`` for what a crash at each point leaves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embellama.engine.planning import OnError
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.ingest.corpus import check_corpus_columns, corpus_files, corpus_kind, iter_corpus
from embellama.ingest.lancedb import (
    LanceWriter,
    WriteMode,
    append_rows,
    drop_present,
    failed_rows,
    present_ids,
    store_rows,
    store_schema,
)
from embellama.ingest.ray import EmbedBatch, embed_dataset, pool_layout, resolve_model_path

if TYPE_CHECKING:
    import ray.data

__all__ = ["WRITE_ROWS", "IngestReport", "count_corpus_rows", "ingest", "ingest_dataset", "read_corpus"]

WRITE_ROWS = 8192
"""Rows per LanceDB commit when Ray workers write (each commit is a table version and a fragment)."""

READ_ROWS = 8192
"""Rows per corpus batch read in this process (embedded in ``batch_size`` slices)."""


@dataclass
class IngestReport:
    """What an ingestion did. ``table_rows`` and ``written`` are counted in the table itself, so retried tasks
    and reruns cannot inflate them."""

    rows: int
    """Corpus rows this run read and embedded (or rejected); with ``resume``, not the rows it skipped."""
    written: int
    """Rows this run added to the table."""
    seconds: float
    errors: dict[str, str] = field(default_factory=dict)
    """With ``on_error="collect"``: each failed row's id (or ``file:line`` for a line that is not JSON) and error."""
    table_rows: int = 0
    """Rows the table holds at the end."""
    skipped: int = 0
    """Rows not embedded because the table held their id already (``resume=True``; counted in this process only)."""
    duplicates: int = 0
    """Embedded rows not written because their id was written already: a repeated id in the corpus (one row per id
    is kept), or, appending without ``resume``, an id the table held before."""

    @property
    def texts_per_second(self) -> float:
        """Rows embedded and written per second, end to end."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def read_corpus(path: str | Path, *, text_column: str = "text", id_column: str = "id") -> pa.Table:
    """Read a whole (small) corpus into one table, adding ``id_column`` (row numbers) if it is missing; an
    ingestion streams it instead (:func:`~embellama.ingest.corpus.iter_corpus`).

    Raises:
        ConfigurationError: the file does not exist, has another format, or lacks ``text_column``.
        InvalidInputError: a line that is not a JSON object (naming its file and line).
    """
    batches = list(iter_corpus(path, text_column=text_column, id_column=id_column))
    if not batches:
        raise ConfigurationError(f"corpus {path} has no rows")
    return pa.concat_tables(batches)


def count_corpus_rows(path: str | Path) -> int:
    """Rows in a corpus without parsing it: Parquet footers, or non-blank JSON lines (one pass over the bytes)."""
    files = corpus_files(path)
    if corpus_kind(files) == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    rows = 0
    for file in files:
        with file.open("rb") as f:
            rows += sum(1 for line in f if line.strip())
    return rows


def ingest(
    corpus: str | Path,
    db: str | Path,
    *,
    table: str = "documents",
    text_column: str = "text",
    id_column: str = "id",
    model_path: str | Path | None = None,
    ray_address: str | None = None,
    num_actors: int | None = None,
    batch_size: int = 256,
    mode: WriteMode = "create",
    resume: bool = False,
    on_error: OnError = "raise",
    progress: Callable[[int, int], None] | None = None,
    compact: bool = True,
    write_rows: int = WRITE_ROWS,
    **model_options: Any,
) -> IngestReport:
    """Embed every row of ``corpus`` and write it to the LanceDB table ``table`` in ``db``, exactly once per id.

    Args:
        corpus: A JSONL or Parquet file, or a directory of them (see
            :func:`~embellama.ingest.corpus.iter_corpus`).
        db: LanceDB directory.
        table: Table name. Defaults to ``"documents"``.
        text_column: Column to embed. Defaults to ``"text"``.
        id_column: Column identifying each row; in this process, row numbers if missing (on Ray it must exist).
            Defaults to ``"id"``.
        model_path: GGUF file. Defaults to the default model.
        ray_address: Embed on Ray: ``"local"`` starts a local cluster (shut down at the end), anything else is
            passed to ``ray.init(address=...)`` (``"auto"``, ``"ray://host:10001"``). Defaults to this process.
        num_actors: With Ray: actors in the pool. Defaults to the cluster's CPUs less one (see
            :func:`~embellama.ingest.ray.pool_layout`).
        batch_size: Rows per embedding batch. Defaults to 256.
        mode: ``"create"`` (the table must not exist), ``"overwrite"`` (both visible only once complete) or
            ``"append"`` (idempotent inserts into the table, visible as they commit). Defaults to ``"create"``.
        resume: Continue an interrupted run: keep what it wrote (its staging table with ``create``/``overwrite``)
            and embed only the ids not written yet. Defaults to False (an interrupted ``create``/``overwrite`` is
            started over; ``append`` still never duplicates an id).
        on_error: ``"raise"``: a bad row stops the ingestion, naming its id (or file and line); nothing becomes
            visible with ``create``/``overwrite``, and ``resume`` continues after the fix. ``"collect"``: bad rows
            are left out of the table and listed in the report. Defaults to ``"raise"``.
        progress: Optional ``progress(done, total)`` callback, called as batches are written.
        compact: Compact the table's fragments at the end. Defaults to True.
        write_rows: Rows per commit (each commit is a table version and a fragment until compacted; what a crash
            can lose at most, per writer). Defaults to 8,192.
        **model_options: Any :class:`~embellama.config.ModelConfig` option.

    Raises:
        ConfigurationError: a bad option, corpus or table mode, or a corpus column the table writes itself.
        InvalidInputError: a bad row, with ``on_error="raise"``.
    """
    if on_error not in ("raise", "collect"):
        raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    files = corpus_files(corpus)
    total = count_corpus_rows(corpus) if progress is not None else 0
    if ray_address is not None:
        return _ingest_on_ray(
            files, corpus, db, ray_address, table=table, text_column=text_column, id_column=id_column,
            model_path=model_path, num_actors=num_actors, batch_size=batch_size, mode=mode, resume=resume,
            on_error=on_error, progress=progress, total_rows=total, compact=compact, write_rows=write_rows,
            **model_options,
        )  # fmt: skip
    started = time.perf_counter()
    errors: dict[str, str] = {}
    bad_lines: list[str] = []

    def bad_line(where: str, message: str) -> None:
        bad_lines.append(where)
        errors[where] = message

    batches = iter_corpus(
        corpus,
        text_column=text_column,
        id_column=id_column,
        batch_rows=max(batch_size, READ_ROWS),
        bad_line=None if on_error == "raise" else bad_line,
    )
    first = next(batches, None)  # columns checked before the table is touched
    writer = LanceWriter(db, table, mode=mode, resume=resume, compact=compact, flush_rows=write_rows)
    if first is None:
        raise ConfigurationError(f"corpus {corpus} has no rows")
    if resume:
        writer.index_ids()
    embedder = EmbedBatch(
        model_path, text_column=text_column, id_column=id_column, on_error="collect", **model_options
    )  # errors come back as rows, raised here as InvalidInputError naming the row
    rows = skipped = embedded_ok = 0
    try:
        for batch in _chain(first, batches):
            rows_in = batch.num_rows
            if resume and writer.rows_before:
                ids = [str(v) for v in batch.column(id_column).to_pylist()]
                present = present_ids(writer.table, ids)
                if present:
                    batch = batch.filter(pa.array([value not in present for value in ids]))
            skipped += rows_in - batch.num_rows
            for start in range(0, batch.num_rows, batch_size):
                embedded = embedder(batch.slice(start, batch_size))
                failed, messages = failed_rows(embedded, id_column=id_column, vector_column="embedding")
                _check_rows(failed, messages, on_error, errors)
                writer.add(
                    store_rows(embedded, id_column=id_column, text_column=text_column, vector_column="embedding")
                )
                embedded_ok += embedded.num_rows - len(failed)
            rows += batch.num_rows
            if progress is not None:
                done = rows + skipped + len(bad_lines)
                progress(done, max(total, done))
        table_rows = writer.close()
    finally:
        embedder.client.engine.close()
    written = table_rows - writer.rows_before
    return IngestReport(
        rows + len(bad_lines), written, time.perf_counter() - started, errors,
        table_rows=table_rows, skipped=skipped, duplicates=embedded_ok - written,
    )  # fmt: skip


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


def _ingest_on_ray(files: list[Path], corpus: str | Path, db: str | Path, address: str, **options: Any) -> IngestReport:
    """Read the corpus with Ray Data's reader, on a cluster joined (or, ``"local"``, started and stopped) here."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    try:
        paths = [str(f) for f in files]
        # read tasks need a CPU the actor pool leaves free; none is free when the pool was sized to the cluster
        actors, actor_cpus = pool_layout(options.get("num_actors"), 1)
        free = int(ray.cluster_resources().get("CPU", 1)) - actors * actor_cpus  # type: ignore[no-untyped-call]
        read_cpus: dict[str, Any] = {"num_cpus": 1 if free >= 1 else 0}
        if corpus_kind(files) == "json":
            ds = ray.data.read_json(paths, ray_remote_args=read_cpus)
        else:
            ds = ray.data.read_parquet(paths, ray_remote_args=read_cpus)
        return ingest_dataset(ds, db=db, **options)
    finally:
        if started_here:
            ray.shutdown()


def ingest_dataset(
    ds: ray.data.Dataset,
    *,
    db: str | Path,
    table: str = "documents",
    text_column: str = "text",
    id_column: str = "id",
    model_path: str | Path | None = None,
    num_actors: int | None = None,
    cpus_per_actor: int = 1,
    batch_size: int = 256,
    mode: WriteMode = "create",
    resume: bool = False,
    on_error: OnError = "raise",
    progress: Callable[[int, int], None] | None = None,
    total_rows: int = 0,
    compact: bool = True,
    write_rows: int = WRITE_ROWS,
    **model_options: Any,
) -> IngestReport:
    """Embed a Ray dataset (``ray.data.read_parquet(...)``, ``read_json``, any source with a text and an id column)
    on an actor pool and write it to a LanceDB table from the workers: read → embed → write, streamed, with no row
    going through the driver. Same table semantics as :func:`ingest` (idempotent on the id; ``create``/``overwrite``
    published in one commit at the end; ``resume``).

    The table (``db``) must be on storage every node reaches. Ray must be initialised.

    Args:
        ds: The corpus as a Ray dataset.
        db: LanceDB directory or URI.
        table: Table name. Defaults to ``"documents"``.
        text_column: Column to embed. Defaults to ``"text"``.
        id_column: Column identifying each row (required). Defaults to ``"id"``.
        model_path: GGUF file, at the same path on every node. Defaults to the default model.
        num_actors: Actors in the pool. Defaults to the cluster's CPUs less one, for Ray Data's read and write
            tasks (see :func:`~embellama.ingest.ray.pool_layout`).
        cpus_per_actor: CPUs each actor reserves. Defaults to 1.
        batch_size: Rows per embedding batch. Defaults to 256.
        mode: ``"create"``, ``"overwrite"`` or ``"append"`` (see :func:`ingest`). Defaults to ``"create"``.
        resume: See :func:`ingest`. Defaults to False.
        on_error: See :func:`ingest`. Defaults to ``"raise"``.
        progress: Optional ``progress(done, total_rows)`` callback, called as batches are written.
        total_rows: The total passed to ``progress``. Defaults to 0 (unknown).
        compact: Compact the table's fragments at the end. Defaults to True.
        write_rows: Rows per commit of each write task. Defaults to 8,192.
        **model_options: Any :class:`~embellama.config.ModelConfig` option.

    Raises:
        ConfigurationError: a bad option, a missing id or text column, or a column the table writes itself.
        InvalidInputError: a bad row, with ``on_error="raise"``, or a corpus that Ray's reader cannot parse.
    """
    import ray

    from embellama.files.gguf import read_header

    if on_error not in ("raise", "collect"):
        raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    started = time.perf_counter()
    try:
        schema = _arrow_schema(ds)  # reads the first block
    except ray.exceptions.RayError as exc:
        raise _read_error(exc) from exc
    check_corpus_columns(schema.names, text_column=text_column, id_column=id_column, where="the dataset")
    if id_column not in schema.names:
        raise ConfigurationError(
            f"the dataset has no id column {id_column!r} (its columns are {schema.names}); on Ray every row needs an "
            "id (rows come back in any order, and writes are idempotent on it)"
        )
    path = resolve_model_path(model_path)
    dimensions = model_options.get("dimensions") or int(read_header(path).arch_value("embedding_length"))
    writer = LanceWriter(db, table, mode=mode, resume=resume, compact=compact)
    name = writer.create_empty(
        store_schema(schema, id_column=id_column, text_column=text_column, dimensions=dimensions)
    )
    if resume and writer.rows_before:
        writer.index_ids()
        unseen = functools.partial(drop_present, db=writer.uri, table=name, id_column=id_column)
        ds = ds.map_batches(unseen, batch_format="pyarrow", batch_size=write_rows, num_cpus=0)
    embedded = embed_dataset(
        ds, model_path=path, text_column=text_column, id_column=id_column, num_actors=num_actors,
        cpus_per_actor=cpus_per_actor, batch_size=batch_size, on_error="collect", **model_options,
    )  # fmt: skip  # errors come back as rows, raised here as InvalidInputError (a task error carries only its text)
    write = functools.partial(
        append_rows, db=writer.uri, table=name, id_column=id_column, text_column=text_column, vector_column="embedding"
    )
    # I/O beside the actors (no CPU reserved); several batches per commit, so the table gets few large fragments
    summaries = embedded.map_batches(write, batch_format="pyarrow", batch_size=max(batch_size, write_rows), num_cpus=0)
    rows = embedded_ok = 0
    errors: dict[str, str] = {}
    try:
        for summary in summaries.iter_batches(batch_format="pyarrow", batch_size=None):
            assert isinstance(summary, pa.Table)
            for row in summary.to_pylist():
                _check_rows(row["failed"], row["errors"], on_error, errors)
                rows += row["rows"]
                embedded_ok += row["rows"] - len(row["failed"])
                if progress is not None:
                    progress(rows, max(total_rows, rows))
    except ray.exceptions.RayError as exc:
        raise _read_error(exc) from exc
    table_rows = writer.close()
    written = table_rows - writer.rows_before
    return IngestReport(
        rows, written, time.perf_counter() - started, errors, table_rows=table_rows, duplicates=embedded_ok - written
    )


def _arrow_schema(ds: ray.data.Dataset) -> pa.Schema:
    schema = ds.schema()
    if schema is None:
        raise ConfigurationError("the dataset is empty")
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return base
    return pa.schema([pa.field(n, pa.from_numpy_dtype(t)) for n, t in zip(schema.names, schema.types, strict=True)])


def _read_error(exc: Exception) -> Exception:
    """A Ray job error that is a corpus Ray's reader cannot parse, as an InvalidInputError; others unchanged."""
    text = str(exc)
    marks = ("JSON parse error", "ArrowInvalid", "JSONDecodeError")  # pyarrow's parser, or Ray's json fallback
    if any(mark in text for mark in marks):
        line = next((ln for ln in text.splitlines() if any(mark in ln for mark in marks)), text)
        return InvalidInputError(
            f"Ray's reader could not parse the corpus ({line.strip()[:300]}); nothing was published. Fix the file, "
            "or ingest without Ray to have bad lines named and skipped, then rerun with resume"
        )
    return exc


def _check_rows(ids: list[str], messages: list[str], on_error: OnError, errors: dict[str, str]) -> None:
    """Raise the first bad row's error (``on_error="raise"``), or record every one."""
    if messages and on_error == "raise":
        raise InvalidInputError(messages[0])
    errors.update(zip(map(str, ids), messages, strict=True))
