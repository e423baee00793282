"""Write embedded rows into a LanceDB table that LangChain's and LlamaIndex's LanceDB stores both query.

The table has the columns both stores read: ``id`` and ``doc_id`` (the row's id, as text), ``text``, ``vector``
(fixed-size float32 lists) and ``metadata`` (a struct of the corpus's other columns, plus ``id``). Query it with
``langchain_community.vectorstores.LanceDB(connection=..., table_name=..., embedding=EmbellamaEmbeddings(...))``
or ``llama_index.vector_stores.lancedb.LanceDBVectorStore(uri=..., table_name=..., mode="append")`` and
``EmbellamaEmbedding(...)`` for the queries — the same model and options that embedded the corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from embellama.errors import ConfigurationError

from .ray import error_column_name

__all__ = ["LanceWriter", "WriteMode", "append_rows", "failed_rows", "store_rows", "store_schema"]

WriteMode = Literal["create", "overwrite", "append"]


def store_rows(batch: pa.Table, *, id_column: str, text_column: str, vector_column: str) -> pa.Table:
    """Turn an embedded batch into the stores' layout (rows without a vector are left out: the caller counts them).

    Every column other than the id, text, vector and error columns goes into ``metadata``.
    """
    vectors = batch.column(vector_column)
    keep = pc.is_valid(vectors)
    if not pc.all(keep).as_py():
        batch = batch.filter(keep)
        vectors = batch.column(vector_column)
    ids = pc.cast(batch.column(id_column), pa.string())
    skip = {id_column, text_column, vector_column, error_column_name(vector_column)}
    meta_names = [name for name in batch.column_names if name not in skip]
    metadata = pa.StructArray.from_arrays(
        [ids.combine_chunks(), *(batch.column(n).combine_chunks() for n in meta_names)], names=["id", *meta_names]
    )
    return pa.table(
        {
            "id": ids,
            "doc_id": ids,
            "text": pc.cast(batch.column(text_column), pa.string()),
            "vector": pc.cast(vectors, pa.list_(pa.float32(), vectors.type.list_size)),
            "metadata": metadata,
        }
    )


def store_schema(corpus: pa.Schema, *, id_column: str, text_column: str, dimensions: int) -> pa.Schema:
    """The stores' schema for rows of ``corpus`` embedded into ``dimensions``-long vectors."""
    empty = corpus.empty_table().append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), dimensions)
    )
    return store_rows(empty, id_column=id_column, text_column=text_column, vector_column="embedding").schema


def failed_rows(batch: pa.Table, *, id_column: str, vector_column: str) -> tuple[list[str], list[str]]:
    """The ids (as text) and errors of the rows of an embedded batch that got no vector (``on_error="collect"``)."""
    error_column = error_column_name(vector_column)
    if error_column not in batch.column_names:
        return [], []
    failed = batch.filter(pc.is_valid(batch.column(error_column)))
    return [str(v) for v in failed.column(id_column).to_pylist()], failed.column(error_column).to_pylist()


def append_rows(
    batch: pa.Table, *, db: str, table: str, id_column: str, text_column: str, vector_column: str
) -> pa.Table:
    """Append an embedded batch to an existing table from wherever it runs (a Ray worker: no row goes through the
    driver); return one summary row: ``written``, and the ``failed`` ids with their ``errors``.

    Lance commits appends from several writers at once (optimistic concurrency, retried on conflict); ``db`` must be
    storage every writer reaches (a local path on one machine, a shared file system or object store on a cluster).
    """
    import lancedb

    ids, errors = failed_rows(batch, id_column=id_column, vector_column=vector_column)
    rows = store_rows(batch, id_column=id_column, text_column=text_column, vector_column=vector_column)
    if rows.num_rows:
        lancedb.connect(db).open_table(table).add(rows)
    return pa.table(
        {
            "written": pa.array([rows.num_rows], pa.int64()),
            "failed": pa.array([ids], pa.list_(pa.string())),
            "errors": pa.array([errors], pa.list_(pa.string())),
        }
    )


class LanceWriter:
    """Append store-layout batches to one LanceDB table, buffering so the table gets few large fragments.

    Args:
        db: LanceDB directory (created if missing).
        table: Table name.
        mode: ``"create"`` (default; the table must not exist), ``"overwrite"`` or ``"append"``.
        flush_rows: Rows buffered before each write. Defaults to 10,000.

    Raises:
        ConfigurationError: ``mode`` is unknown, or ``"create"`` and the table exists.
    """

    def __init__(self, db: str | Path, table: str, *, mode: WriteMode = "create", flush_rows: int = 10_000) -> None:
        import lancedb

        if mode not in ("create", "overwrite", "append"):
            raise ConfigurationError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        self.uri = str(db)
        self.db = lancedb.connect(self.uri)
        self.name = table
        self.mode = mode
        self.flush_rows = flush_rows
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._table: Any = None
        if mode == "create" and table in self._table_names():
            raise ConfigurationError(f"table {table!r} already exists in {db}; use mode 'overwrite' or 'append'")

    def create_empty(self, schema: pa.Schema) -> str:
        """Create the table (per ``mode``) with no rows, for writers elsewhere to append to; return its name."""
        if self.mode == "append" and self.name in self._table_names():
            return self.name
        self._table = self.db.create_table(self.name, schema=schema, mode="overwrite")
        return self.name

    def _table_names(self) -> list[str]:
        listed = self.db.list_tables()
        return list(getattr(listed, "tables", listed))

    def add(self, rows: pa.Table) -> None:
        """Queue ``rows`` (store layout, see :func:`store_rows`); write when enough are queued."""
        if rows.num_rows:
            self._pending.append(rows)
        if sum(t.num_rows for t in self._pending) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows."""
        if not self._pending:
            return
        data = pa.concat_tables(self._pending)
        self._pending = []
        if self._table is None:
            exists = self.name in self._table_names()
            if self.mode == "append" and exists:
                self._table = self.db.open_table(self.name)
                self._table.add(data)
            else:
                self._table = self.db.create_table(self.name, data=data, mode="overwrite")
        else:
            self._table.add(data)
        self.rows_written += data.num_rows

    def close(self) -> None:
        """Write what is still queued."""
        self.flush()
