"""Checking caller input once, at the edge: each text must be a ``str`` that UTF-8 can encode.

Texts that pass are returned as plain ``str`` (a ``str`` subclass, e.g. one defined in a notebook, is copied), so
what crosses threads and processes below the engine is always picklable. A prompt (or a reranker's query) is
checked the same way, and bounded in size: it is joined to every input of its request.
"""

from __future__ import annotations

from embellama.errors import InvalidInputError

__all__ = ["PROMPT_BYTES_PER_TOKEN", "encode_text", "validate_prompt", "validate_text"]

PROMPT_BYTES_PER_TOKEN = 16
"""Most UTF-8 bytes a prompt may have per token of the model's input limit. Real text averages 3-6 bytes per token
in every supported vocabulary, so a longer prompt would exceed the limit anyway; refusing it before tokenizing
bounds the cost of joining it to every input (a 256 KiB whitespace prompt tokenizes to nothing but costs a
full pass over 256 KiB for every input it is joined to)."""


def encode_text(text: object, index: int | None = None, *, subject: str = "text") -> tuple[str, bytes]:
    """``text`` as a plain ``str`` and its UTF-8 bytes, or ``InvalidInputError`` naming ``index`` (or ``subject``)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"expected str, got {type(text).__name__}", index=index, subject=subject)
    plain = text if type(text) is str else str.__str__(text)
    try:
        data = plain.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"not valid Unicode: {exc.reason} at character {exc.start} ({plain[exc.start : exc.end]!r})",
            index=index,
            subject=subject,
        ) from None
    return plain, data


def validate_text(text: object, index: int | None = None) -> str:
    """Return ``text`` as a plain ``str`` if it can be embedded, else raise ``InvalidInputError`` naming ``index``."""
    return encode_text(text, index)[0]


def validate_prompt(prompt: object, *, limit: int, model_name: str | None = None, subject: str = "prompt") -> str:
    """Check a prompt (or a reranker's query) like an input, and its size against the model's limit of ``limit``
    tokens (at most :data:`PROMPT_BYTES_PER_TOKEN` bytes per token); return it as a plain ``str``.

    Raises:
        InvalidInputError: not a ``str`` UTF-8 can encode, or too large; its ``subject`` names the prompt.
    """
    plain, data = encode_text(prompt, subject=subject)
    most = PROMPT_BYTES_PER_TOKEN * max(1, limit)
    if len(data) > most:
        raise InvalidInputError(
            f"{len(data):,} UTF-8 bytes, more than a {subject} within the model's limit of {limit} tokens can have "
            f"(at most {most:,} bytes, {PROMPT_BYTES_PER_TOKEN} per token)",
            limit=limit,
            model_name=model_name,
            subject=subject,
        )
    return plain
