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
from embellama.ingest.columns import error_column_name

__all__ = [
    "STAGING_SUFFIX",
    "LanceWriter",
    "WriteMode",
    "append_rows",
    "drop_present",
    "failed_rows",
    "insert_new_rows",
    "present_ids",
    "publish",
    "staging_name",
    "store_rows",
    "store_schema",
    "unique_rows",
]

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


def unique_rows(rows: pa.Table) -> pa.Table:
    """``rows`` with one row per ``id`` (the first), so no write can insert an id twice."""
    ids = rows.column("id")
    if pc.count_distinct(ids).as_py() == rows.num_rows:
        return rows
    first: dict[str, int] = {}
    for index, value in enumerate(ids.to_pylist()):
        first.setdefault(value, index)
    return rows.take(pa.array(sorted(first.values()), pa.int64()))


def insert_new_rows(table: Any, rows: pa.Table) -> int:
    """Insert the rows of ``rows`` (store layout) whose ``id`` the LanceDB ``table`` does not hold yet, in one
    commit; return how many were inserted.

    Idempotent: writing the same rows again (a retried task, a rerun) inserts nothing. One ``merge_insert`` on
    ``id`` (insert when not matched), so the check and the insert are one atomic commit.
    """
    rows = unique_rows(rows)
    if not rows.num_rows:
        return 0
    result = table.merge_insert("id").when_not_matched_insert_all().execute(rows)
    inserted = getattr(result, "num_inserted_rows", None)
    return rows.num_rows if inserted is None else int(inserted)


def present_ids(table: Any, ids: list[str], *, chunk: int = 4096) -> set[str]:
    """The ids among ``ids`` that the LanceDB ``table`` holds (one filtered scan of its ``id`` column per
    ``chunk`` ids; fast with a scalar index on ``id``, see :meth:`LanceWriter.index_ids`)."""
    found: set[str] = set()
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        listed = ", ".join("'" + value.replace("'", "''") + "'" for value in part)
        hits = table.search().where(f"id IN ({listed})").select(["id"]).limit(len(part)).to_arrow()
        found.update(hits.column("id").to_pylist())
    return found


def drop_present(batch: pa.Table, *, db: str, table: str, id_column: str) -> pa.Table:
    """The rows of a corpus batch whose id the table does not hold yet (what a resumed run still has to embed)."""
    import lancedb

    ids = [str(v) for v in batch.column(id_column).to_pylist()]
    present = present_ids(lancedb.connect(db).open_table(table), ids)
    if not present:
        return batch
    return batch.filter(pa.array([value not in present for value in ids]))


def append_rows(
    batch: pa.Table, *, db: str, table: str, id_column: str, text_column: str, vector_column: str
) -> pa.Table:
    """Insert an embedded batch into an existing table from wherever it runs (a Ray worker: no row goes through
    the driver), skipping ids the table already holds; return one summary row: ``rows`` (embedded rows handed
    in), ``written`` (inserted), and the ``failed`` ids with their ``errors``.

    Idempotent on the id (see :func:`insert_new_rows`): a task Ray retries after its commit inserts nothing.
    Lance commits writes from several writers at once (optimistic concurrency, retried on conflict); ``db`` must be
    storage every writer reaches (a local path on one machine, a shared file system or object store on a cluster).
    """
    import lancedb

    ids, errors = failed_rows(batch, id_column=id_column, vector_column=vector_column)
    rows = store_rows(batch, id_column=id_column, text_column=text_column, vector_column=vector_column)
    written = insert_new_rows(lancedb.connect(db).open_table(table), rows) if rows.num_rows else 0
    return pa.table(
        {
            "rows": pa.array([batch.num_rows], pa.int64()),
            "written": pa.array([written], pa.int64()),
            "failed": pa.array([ids], pa.list_(pa.string())),
            "errors": pa.array([errors], pa.list_(pa.string())),
        }
    )


STAGING_SUFFIX = "__embellama_staging"
"""``create`` and ``overwrite`` write into ``<table><STAGING_SUFFIX>`` and publish it as ``<table>`` at the end."""


def staging_name(table: str) -> str:
    """The table a ``create`` or ``overwrite`` of ``table`` writes into until it publishes."""
    return table + STAGING_SUFFIX


class LanceWriter:
    """Write store-layout rows into one LanceDB table: idempotent on ``id``, buffered into few large fragments, and
    with ``create``/``overwrite``, visible only once complete.

    ``create`` and ``overwrite`` write into a staging table (``<table>__embellama_staging``) and :meth:`close`
    publishes it as ``table`` in one Lance commit (an ``Overwrite`` of ``table`` whose fragments are the staging
    table's data files, hard-linked or copied), then drops the staging table. Until then readers see the previous
    ``table`` (or none); a crash at any point leaves the previous table intact. ``append`` inserts into ``table``
    itself, each flush one atomic commit. Every write skips ids the table already holds
    (:func:`insert_new_rows`), so writing a row twice never duplicates it.

    Args:
        db: LanceDB directory (created if missing).
        table: Table name.
        mode: ``"create"`` (default; the table must not exist), ``"overwrite"`` or ``"append"`` (the table is created
            if missing).
        flush_rows: Rows buffered before each write. Defaults to 10,000.
        resume: Continue an interrupted ``create``/``overwrite`` (its staging table is kept) instead of starting
            over. Defaults to False (an interrupted run's staging table is dropped).
        compact: Compact the written table's fragments (LanceDB ``optimize``) before :meth:`close` publishes.
            Defaults to True.

    Raises:
        ConfigurationError: ``mode`` is unknown, or ``"create"`` and the table exists.
    """

    def __init__(
        self,
        db: str | Path,
        table: str,
        *,
        mode: WriteMode = "create",
        flush_rows: int = 10_000,
        resume: bool = False,
        compact: bool = True,
    ) -> None:
        import lancedb

        if mode not in ("create", "overwrite", "append"):
            raise ConfigurationError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        self.uri = str(db)
        self.db = lancedb.connect(self.uri)
        self.target = table
        self.mode = mode
        self.flush_rows = flush_rows
        self.compact = compact
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._table: Any = None
        names = self._table_names()
        if mode == "create" and table in names:
            raise ConfigurationError(f"table {table!r} already exists in {db}; use mode 'overwrite' or 'append'")
        self.name = table if mode == "append" else staging_name(table)
        """The table rows go into until :meth:`close` (the staging table with ``create``/``overwrite``)."""
        if self.name != table and self.name in names and not resume:
            self.db.drop_table(self.name)  # an interrupted run's rows: start over
            names.remove(self.name)
        if self.name in names:
            self._table = self.db.open_table(self.name)
        self.rows_before = self._table.count_rows() if self._table is not None else 0
        """Rows the written table held before this writer (resumed or appended to)."""

    @property
    def table(self) -> Any:
        """The LanceDB table rows go into (``None`` until created)."""
        return self._table

    def _table_names(self) -> list[str]:
        listed = self.db.list_tables()
        return list(getattr(listed, "tables", listed))

    def create_empty(self, schema: pa.Schema) -> str:
        """Create the table rows go into (if missing) with no rows, for writers elsewhere; return its name."""
        if self._table is None:
            self._table = self.db.create_table(self.name, schema=schema, exist_ok=True)
        return self.name

    def index_ids(self) -> None:
        """Build a scalar (BTREE) index on ``id`` of the written table, so :func:`present_ids` looks ids up instead
        of scanning (worth it before resuming into a large table)."""
        if self._table is not None and self.rows_before:
            from lancedb.index import BTree

            self._table.create_index("id", config=BTree(), replace=True)

    def add(self, rows: pa.Table) -> None:
        """Queue ``rows`` (store layout, see :func:`store_rows`); write when enough are queued."""
        if rows.num_rows:
            self._pending.append(rows)
            self._pending_rows += rows.num_rows
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows (one commit; ids the table holds are skipped)."""
        if not self._pending:
            return
        data = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        if self._table is None:
            self._table = self.db.create_table(self.name, schema=data.schema, exist_ok=True)
        self.rows_written += insert_new_rows(self._table, data)

    def table_rows(self) -> int:
        """Rows the written table holds now (the staging table's until :meth:`close` publishes)."""
        return 0 if self._table is None else int(self._table.count_rows())

    def close(self) -> int:
        """Write what is still queued, compact, and publish (``create``/``overwrite``); return the rows ``table``
        holds."""
        self.flush()
        if self._table is None:  # nothing was ever written, nor created
            if self.mode == "append":
                return 0
            raise ConfigurationError("nothing to write: the corpus has no rows")
        if self.compact:
            self._table.optimize()
        if self.name == self.target:
            return self.table_rows()
        publish(self.db, self.name, self.target)
        self._table = self.db.open_table(self.target)
        self.name = self.target
        return self.table_rows()


def publish(db: Any, staging: str, target: str) -> None:
    """Make the LanceDB table ``staging`` the new content of ``target`` in one commit, then drop ``staging``.

    The staging table's data files are hard-linked (copied where links are not possible) into ``target``'s data
    folder, where uncommitted files are invisible; one Lance ``Overwrite`` commit then makes them ``target``'s
    latest version (a new table, or the next version of an existing one: its earlier versions stay until cleaned
    up). A crash before that commit leaves ``target`` as it was; after it, ``target`` is complete.
    """
    import lance

    source = db.open_table(staging).to_lance()
    source_uri = str(source.uri).rstrip("/")
    target_uri = source_uri[: source_uri.rstrip("/").rfind("/") + 1] + target + ".lance"
    fragments = [fragment.metadata for fragment in source.get_fragments()]
    for fragment in fragments:
        if fragment.deletion_file is not None:
            raise RuntimeError(f"staging table {staging!r} has deleted rows; cannot publish it by linking")
        for data_file in fragment.files:
            _link(f"{source_uri}/data/{data_file.path}", f"{target_uri}/data/{data_file.path}")
    lance.LanceDataset.commit(target_uri, lance.LanceOperation.Overwrite(source.schema, fragments))
    db.drop_table(staging)


def _link(source: str, target: str) -> None:
    """Hard-link (local paths) or copy a data file."""
    import os
    import shutil

    if "://" in source and not source.startswith("file://"):
        import pyarrow.fs

        fs, src = pyarrow.fs.FileSystem.from_uri(source)
        _, dst = pyarrow.fs.FileSystem.from_uri(target)
        fs.copy_file(src, dst)
        return
    source, target = source.removeprefix("file://"), target.removeprefix("file://")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
