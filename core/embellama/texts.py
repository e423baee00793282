"""Checking caller input once, at the edge: each text must be a ``str`` that UTF-8 can encode.

Texts that pass are returned as plain ``str`` (a ``str`` subclass, e.g. one defined in a notebook, is copied), so
what crosses threads and processes below the engine is always picklable.
"""

from __future__ import annotations

from .errors import InvalidInputError

__all__ = ["validate_text"]


def validate_text(text: object, index: int | None = None) -> str:
    """Return ``text`` as a plain ``str`` if it can be embedded, else raise ``InvalidInputError`` naming ``index``."""
    if not isinstance(text, str):
        raise InvalidInputError(f"expected str, got {type(text).__name__}", index=index)
    plain = text if type(text) is str else str.__str__(text)
    try:
        plain.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"not valid Unicode: {exc.reason} at character {exc.start} ({plain[exc.start : exc.end]!r})", index=index
        ) from None
    return plain
