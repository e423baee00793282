"""Names of the columns an ingestion adds to a table, shared by every engine (Ray, Daft, local) and every sink."""

from __future__ import annotations

__all__ = ["error_column_name"]


def error_column_name(output_column: str) -> str:
    """The column that holds each row's error with ``on_error="collect"`` (``None`` where the row embedded)."""
    return f"{output_column}_error"
