"""Ingest a corpus file into LanceDB: read JSONL/Parquet, embed (in this process or on Ray), write, report.

What ``embellama ingest CORPUS --db PATH [--ray ADDRESS]`` runs. The corpus is read here (one row per document:
a text column, an optional id column — row numbers otherwise — and any metadata columns) and the vectors are
computed by :class:`~embellama_integrations.ray.EmbedBatch`. In this process,
:class:`~embellama_integrations.lancedb.LanceWriter` writes them as they arrive; on Ray
(:func:`~embellama_integrations.ray.embed_dataset`), tasks beside the actors append them to the table themselves
(:func:`~embellama_integrations.lancedb.append_rows`) and only counts and failed ids come back here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from embellama.errors import ConfigurationError, InvalidInputError
from embellama.planning import OnError

from .lancedb import LanceWriter, WriteMode, append_rows, failed_rows, store_rows, store_schema
from .ray import EmbedBatch, embed_dataset, resolve_model_path

__all__ = ["WRITE_ROWS", "IngestReport", "ingest", "read_corpus"]

WRITE_ROWS = 8192
"""Rows per LanceDB commit when Ray workers write (each commit is a table version and a fragment)."""


@dataclass
class IngestReport:
    """What an ingestion did."""

    rows: int
    """Rows read from the corpus."""
    written: int
    """Rows written to the table (all rows but the failed ones)."""
    seconds: float
    errors: dict[str, str] = field(default_factory=dict)
    """With ``on_error="collect"``: each failed row's id and error."""

    @property
    def texts_per_second(self) -> float:
        """Rows embedded and written per second, end to end."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def read_corpus(path: str | Path, *, text_column: str = "text", id_column: str = "id") -> pa.Table:
    """Read a JSONL (``.jsonl``/``.json``) or Parquet corpus, adding ``id_column`` (row numbers) if it is missing.

    Raises:
        ConfigurationError: the file does not exist, has another format, or lacks ``text_column``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"corpus file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        import pyarrow.json as pajson

        try:
            table = pajson.read_json(path)
        except pa.ArrowInvalid as exc:
            raise ConfigurationError(f"{path} is not JSON lines (one object per line): {exc}") from exc
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        raise ConfigurationError(f"corpus must be .jsonl or .parquet, got {path.name!r}")
    if text_column not in table.column_names:
        raise ConfigurationError(f"{path} has no column {text_column!r}; its columns are {table.column_names}")
    if id_column not in table.column_names:
        table = table.append_column(id_column, pa.array([str(i) for i in range(table.num_rows)]))
    return table


def _local_batches(table: pa.Table, batch_size: int, embedder_options: dict[str, Any]) -> Iterator[pa.Table]:
    embedder = EmbedBatch(**embedder_options)
    try:
        for start in range(0, table.num_rows, batch_size):
            yield embedder(table.slice(start, batch_size))
    finally:
        embedder.client.engine.close()


def _ray_writes(
    data: pa.Table,
    writer: LanceWriter,
    address: str,
    batch_size: int,
    num_actors: int | None,
    embedder_options: dict[str, Any],
) -> Iterator[pa.Table]:
    """Embed on Ray and write from the workers; yield one summary row per batch (see :func:`append_rows`)."""
    import ray

    from embellama.gguf import read_header

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    options = dict(embedder_options)
    path = resolve_model_path(options.pop("model_path"))
    dimensions = options.get("dimensions") or int(read_header(path).arch_value("embedding_length"))
    id_column, text_column = options["id_column"], options["text_column"]
    schema = store_schema(data.schema, id_column=id_column, text_column=text_column, dimensions=dimensions)
    name = writer.create_empty(schema)
    blocks = [data.slice(start, batch_size) for start in range(0, data.num_rows, batch_size)]
    ds = embed_dataset(
        ray.data.from_arrow(blocks), model_path=path, num_actors=num_actors, batch_size=batch_size, **options
    )
    write = functools.partial(
        append_rows, db=writer.uri, table=name, id_column=id_column, text_column=text_column, vector_column="embedding"
    )
    # I/O beside the actors (no CPU reserved); several batches per commit, so the table gets few large fragments
    written = ds.map_batches(write, batch_format="pyarrow", batch_size=max(batch_size, WRITE_ROWS), num_cpus=0)
    yield from written.iter_batches(batch_format="pyarrow", batch_size=None)


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
    on_error: OnError = "raise",
    progress: Callable[[int, int], None] | None = None,
    **model_options: Any,
) -> IngestReport:
    """Embed every row of ``corpus`` and write it to the LanceDB table ``table`` in ``db``.

    Args:
        corpus: JSONL or Parquet file (see :func:`read_corpus`).
        db: LanceDB directory.
        table: Table name. Defaults to ``"documents"``.
        text_column: Column to embed. Defaults to ``"text"``.
        id_column: Column identifying each row (added from row numbers if missing). Defaults to ``"id"``.
        model_path: GGUF file. Defaults to the default model.
        ray_address: Embed on Ray: ``"local"`` starts a local cluster, anything else is passed to
            ``ray.init(address=...)`` (``"auto"``, ``"ray://host:10001"``). Defaults to this process (no Ray).
        num_actors: With Ray: actors in the pool. Defaults to the cluster's CPUs.
        batch_size: Rows per batch. Defaults to 256.
        mode: ``"create"`` (the table must not exist), ``"overwrite"`` or ``"append"``.
        on_error: ``"raise"``: a bad row stops the ingestion, naming its id (rows already written stay).
            ``"collect"``: bad rows are left out of the table and listed in the report.
        progress: Optional ``progress(done, total)`` callback, called as batches are written.
        **model_options: Any :class:`~embellama.config.ModelConfig` option.

    Raises:
        ConfigurationError: a bad option, corpus file or table mode.
        InvalidInputError: a bad row, with ``on_error="raise"``.
    """
    if on_error not in ("raise", "collect"):
        raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    started = time.perf_counter()
    data = read_corpus(corpus, text_column=text_column, id_column=id_column)
    writer = LanceWriter(db, table, mode=mode)
    options: dict[str, Any] = dict(
        model_path=model_path, text_column=text_column, id_column=id_column, on_error="collect", **model_options
    )  # errors come back as rows, raised here as InvalidInputError (a Ray task error would only carry its text)
    done = 0
    errors: dict[str, str] = {}
    if ray_address is None:
        for batch in _local_batches(data, batch_size, options):
            _check_rows(*failed_rows(batch, id_column=id_column, vector_column="embedding"), on_error, errors)
            writer.add(store_rows(batch, id_column=id_column, text_column=text_column, vector_column="embedding"))
            done += batch.num_rows
            if progress is not None:
                progress(done, data.num_rows)
        writer.close()
        written = writer.rows_written
    else:
        written = 0
        for summary in _ray_writes(data, writer, ray_address, batch_size, num_actors, options):
            for row in summary.to_pylist():
                _check_rows(row["failed"], row["errors"], on_error, errors)
                written += row["written"]
                done += row["written"] + len(row["failed"])
                if progress is not None:
                    progress(done, data.num_rows)
    return IngestReport(data.num_rows, written, time.perf_counter() - started, errors)


def _check_rows(ids: list[str], messages: list[str], on_error: OnError, errors: dict[str, str]) -> None:
    """Raise the first bad row's error (``on_error="raise"``), or record every one."""
    if messages and on_error == "raise":
        raise InvalidInputError(messages[0])
    errors.update(zip(map(str, ids), messages, strict=True))
