"""Read a corpus (JSONL, Parquet, or a directory of either) in bounded batches, whatever its size.

The driver of an ingestion never holds the corpus: :func:`iter_corpus` yields Arrow tables of about
``batch_rows`` rows (and at most about ``block_bytes`` of JSON) one at a time. JSON lines are cut into blocks at
line ends here, so a block always holds whole lines and is as large as its longest line needs (a 10 MB document
parses like a short one). A line that is not a JSON object is reported with its file and line number (or, collecting,
left out and listed). :func:`check_corpus_columns` refuses, before anything is embedded, a corpus whose columns
would collide with the columns the ingestion adds or the store's own.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from embellama.errors import ConfigurationError, InvalidInputError

__all__ = [
    "JSON_SUFFIXES",
    "PARQUET_SUFFIXES",
    "RESERVED_COLUMNS",
    "check_corpus_columns",
    "corpus_files",
    "iter_corpus",
]

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
RESERVED_COLUMNS = ("embedding", "embedding_error", "vector", "metadata", "doc_id")
"""Corpus column names an ingestion refuses: the vector and error columns it adds, and the store's own columns."""

BadLine = Callable[[str, str], None]
"""``bad_line(where, message)``: called for each corpus line that is not a JSON object (``where`` is
``file:line``)."""


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a corpus: ``path`` itself, or the JSONL or Parquet files in the directory ``path`` (sorted;
    one format per corpus).

    Raises:
        ConfigurationError: nothing at ``path``, another format, an empty directory or one mixing formats.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in JSON_SUFFIXES + PARQUET_SUFFIXES
        )
        if not files:
            raise ConfigurationError(f"corpus directory {path} holds no .jsonl or .parquet files")
    else:
        raise ConfigurationError(f"corpus file not found: {path}")
    kinds = {_kind(p) for p in files}
    if len(kinds) > 1:
        raise ConfigurationError(f"corpus directory {path} mixes JSON lines and Parquet files; use one format")
    return files


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ConfigurationError(f"corpus must be .jsonl or .parquet, got {path.name!r}")


def corpus_kind(files: list[Path]) -> str:
    """``"json"`` or ``"parquet"``: the format of a corpus's files (see :func:`corpus_files`)."""
    return _kind(files[0])


def check_corpus_columns(names: list[str], *, text_column: str, id_column: str, where: str) -> None:
    """Refuse a corpus that lacks ``text_column`` or has a column an ingestion would overwrite.

    Raises:
        ConfigurationError: naming the column and ``where`` (the corpus).
    """
    if text_column not in names:
        raise ConfigurationError(f"{where} has no column {text_column!r}; its columns are {names}")
    reserved = list(RESERVED_COLUMNS)
    if id_column != "id":
        reserved.append("id")  # the store's id column and metadata field come from id_column
    clash = [name for name in names if name in reserved and name not in (text_column, id_column)]
    if clash:
        raise ConfigurationError(
            f"{where} has column(s) {clash}, which the ingestion writes itself ({', '.join(reserved)}); "
            "rename them in the corpus"
        )


def iter_corpus(
    path: str | Path,
    *,
    text_column: str = "text",
    id_column: str = "id",
    batch_rows: int = 8192,
    block_bytes: int = 8 << 20,
    bad_line: BadLine | None = None,
) -> Iterator[pa.Table]:
    """Yield the corpus at ``path`` as Arrow tables of at most ``batch_rows`` rows, in file order.

    Every table has the first batch's schema; ``id_column`` is added (row numbers over the whole corpus, as text)
    where the corpus lacks it. Memory stays at about one batch, whatever the corpus's size.

    Args:
        path: A JSONL/Parquet file or a directory of them (see :func:`corpus_files`).
        text_column: Column to embed. Defaults to ``"text"``.
        id_column: Row id column. Defaults to ``"id"``.
        batch_rows: Rows per table. Defaults to 8,192.
        block_bytes: Bytes of JSON lines parsed at once (a longer line gets a block of its own). Defaults to 8 MiB.
        bad_line: Called with ``(file:line, message)`` for each line that is not a JSON object; the line is left
            out (its row number stays used). Defaults to raising.

    Raises:
        ConfigurationError: a missing or wrongly shaped corpus (see :func:`corpus_files`), a missing text column,
            a reserved column name, or a later batch whose columns differ from the first's.
        InvalidInputError: a line that is not a JSON object, without ``bad_line``.
    """
    files = corpus_files(path)
    kind = corpus_kind(files)
    settled: list[pa.Schema] = []  # the first batch's schema, once read
    add_ids = False
    next_row = [0]  # row numbers run over the whole corpus
    for file in files:
        if kind == "json":
            batches = _json_batches(file, batch_rows, block_bytes, bad_line, next_row, settled)
        else:
            batches = _parquet_batches(file, batch_rows, next_row)
        for table, numbers in batches:
            if not settled:
                check_corpus_columns(table.column_names, text_column=text_column, id_column=id_column, where=str(path))
                add_ids = id_column not in table.column_names
                settled.append(_settled(table.schema))
            table = _conform(table, settled[0], file)
            if add_ids:
                table = table.append_column(id_column, pa.array([str(n) for n in numbers], pa.string()))
            if table.num_rows:
                yield table


def _settled(schema: pa.Schema) -> pa.Schema:
    """The first batch's schema, with all-null columns (type unknown yet) as strings."""
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _conform(table: pa.Table, schema: pa.Schema, where: Path | str) -> pa.Table:
    """``table`` with ``schema``: missing columns as nulls; a column may differ only by being all-null or an integer
    where the schema has a float (no other cast: a number is not silently turned into text).

    Raises:
        ConfigurationError: a column the schema lacks, or of another type, naming ``where``.
    """
    if table.schema.equals(schema):
        return table
    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise ConfigurationError(f"{where}: column(s) {extra} not in the corpus's first rows ({schema.names})")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        same = column.type.equals(field.type) or pa.types.is_null(column.type)
        widened = pa.types.is_integer(column.type) and pa.types.is_floating(field.type)
        if not (same or widened):
            raise ConfigurationError(
                f"{where}: column {field.name!r} is {column.type}, but {field.type} in the corpus's first rows"
            )
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _parquet_batches(file: Path, batch_rows: int, next_row: list[int]) -> Iterator[tuple[pa.Table, list[int]]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
        first = next_row[0]
        next_row[0] += batch.num_rows
        yield pa.Table.from_batches([batch]), list(range(first, next_row[0]))


def _json_batches(
    file: Path,
    batch_rows: int,
    block_bytes: int,
    bad_line: BadLine | None,
    next_row: list[int],
    settled: list[pa.Schema],
) -> Iterator[tuple[pa.Table, list[int]]]:
    """Parse ``file`` in blocks of whole lines; yield each table with the row numbers of its rows (rows are the
    non-blank lines, bad ones included, so a row keeps its number when a bad line before it is fixed)."""
    lines: list[bytes] = []
    numbers: list[int] = []  # 1-based line numbers in the file
    size = 0
    with file.open("rb") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            numbers.append(line_number)
            size += len(line)
            if len(lines) >= batch_rows or size >= block_bytes:
                yield from _parse_block(file, lines, numbers, next_row, bad_line, settled)
                lines, numbers, size = [], [], 0
    if lines:
        yield from _parse_block(file, lines, numbers, next_row, bad_line, settled)


def _read_json_bytes(data: bytes) -> pa.Table:
    import pyarrow.json as pajson

    # one block for the whole buffer: it holds only whole lines, so no line can straddle two blocks
    return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=len(data) + 1))


def _parse_block(
    file: Path,
    lines: list[bytes],
    numbers: list[int],
    next_row: list[int],
    bad_line: BadLine | None,
    settled: list[pa.Schema],
) -> Iterator[tuple[pa.Table, list[int]]]:
    rows = list(range(next_row[0], next_row[0] + len(lines)))
    next_row[0] += len(lines)
    try:
        table = _read_json_bytes(b"".join(lines))
    except pa.ArrowInvalid:
        table = None
    if table is not None and table.num_rows == len(lines):
        yield table, rows
        return
    # find the bad line(s): parse each alone, and hold each to the corpus's columns
    good: list[pa.Table] = []
    kept: list[int] = []
    for line, number, row in zip(lines, numbers, rows, strict=True):
        where = f"{file}:{number}"
        try:
            one = _read_json_bytes(line)
            if one.num_rows != 1:
                raise pa.ArrowInvalid("not one JSON object")
        except pa.ArrowInvalid as exc:
            _bad(bad_line, where, f"{where}: not a JSON object ({str(exc).splitlines()[0][:200]})", exc)
            continue
        reference = settled[0] if settled else (_settled(good[0].schema) if good else _settled(one.schema))
        try:
            good.append(_conform(one, reference, where))
        except ConfigurationError as exc:
            _bad(bad_line, where, str(exc), exc)
            continue
        kept.append(row)
    if good:
        yield pa.concat_tables(good), kept


def _bad(bad_line: BadLine | None, where: str, message: str, cause: Exception) -> None:
    if bad_line is None:
        raise InvalidInputError(message) from cause
    bad_line(where, message)
