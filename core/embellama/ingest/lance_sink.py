"""Write an embedded Ray dataset into a LanceDB table through Lance's own Ray sink (``lance-ray``).

Ray's built-in ``Dataset.write_lance`` fails with current pylance (it passes ``storage_options_provider``, which
pylance 14's ``write_fragments`` no longer takes: ray-project/ray#65129). Lance's ``lance_ray.write_lance`` is the
same design maintained with pylance: each Ray task writes Lance fragment files, and the driver commits them all in
one table version at the end — the table appears (``create``/``overwrite``) or grows (``append``) only when every
row is written. :func:`write_table` puts the rows into the stores' layout first
(:func:`~embellama.ingest.lancedb.store_rows`), so LangChain's and LlamaIndex's LanceDB stores query the
result like a table ``embellama ingest`` wrote.

Compared with :func:`~embellama.ingest.lancedb.append_rows` from the workers (one commit, and one table
version, per 8,192 rows), the sink makes one version per job; ``benchmarks/lance_sinks.py`` measures both.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from embellama.errors import ConfigurationError
from embellama.ingest.lancedb import WriteMode, store_rows

if TYPE_CHECKING:
    import ray.data

__all__ = ["table_uri", "write_table"]


def table_uri(db: str | Path, table: str) -> str:
    """The Lance dataset behind LanceDB table ``table`` of the database ``db`` (``<db>/<table>.lance``)."""
    return f"{str(db).rstrip('/')}/{table}.lance"


def write_table(
    ds: ray.data.Dataset,
    *,
    db: str | Path,
    table: str,
    mode: WriteMode = "create",
    id_column: str = "id",
    text_column: str = "text",
    vector_column: str = "embedding",
    concurrency: int | None = None,
) -> int:
    """Write an embedded dataset (see :func:`~embellama.ingest.ray.embed_dataset`) to the LanceDB table
    ``table`` in ``db`` with ``lance_ray.write_lance``, in one commit; return the table's row count.

    Rows without a vector (``on_error="collect"``) are left out; use ``on_error="raise"`` (the default) to fail the
    job on a bad row instead.

    Args:
        ds: The embedded dataset.
        db: LanceDB directory (or object-store URI) every Ray worker can write to.
        table: Table name.
        mode: ``"create"`` (default; the table must not exist), ``"overwrite"`` or ``"append"``.
        id_column: Column identifying each row. Defaults to ``"id"``.
        text_column: Column holding the texts. Defaults to ``"text"``.
        vector_column: Column holding the vectors. Defaults to ``"embedding"``.
        concurrency: Ray write tasks at once. Defaults to the cluster's CPUs (the tasks reserve none, so Ray Data
            would otherwise start one per block at once).

    Raises:
        ConfigurationError: ``mode`` is unknown, the table exists (``create``) or does not (``append``), or
            lance-ray is not installed (all checked before anything runs).
    """
    if mode not in ("create", "overwrite", "append"):
        raise ConfigurationError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
    try:
        import lance_ray
    except ImportError as exc:
        raise ConfigurationError("Lance's Ray sink needs lance-ray: pip install 'embellama[ray]'") from exc
    import lancedb

    listed = lancedb.connect(str(db)).list_tables()
    exists = table in list(getattr(listed, "tables", listed))
    if mode == "create" and exists:  # lance-ray's sink would write into it anyway
        raise ConfigurationError(f"table {table!r} already exists in {db}; use mode 'overwrite' or 'append'")
    if mode == "append" and not exists:
        raise ConfigurationError(f"table {table!r} does not exist in {db}; use mode 'create'")
    rows = ds.map_batches(
        functools.partial(store_rows, id_column=id_column, text_column=text_column, vector_column=vector_column),
        batch_format="pyarrow",
        num_cpus=0,  # a column rearrangement beside the actors: no CPU reserved
        zero_copy_batch=True,
    )
    if concurrency is None:
        import ray

        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    lance_ray.write_lance(
        rows,
        table_uri(db, table),
        mode=mode,
        concurrency=concurrency,
        ray_remote_args={"num_cpus": 0},  # I/O, as append_rows: the actors keep every CPU they reserved
    )
    return int(lancedb.connect(str(db)).open_table(table).count_rows())
