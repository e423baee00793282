"""Packing tokenized texts into decode batches, and restoring the caller's order.

A decode holds at most ``max_texts`` sequences and ``max_tokens`` tokens (both llama.cpp limits that abort the
process when exceeded). Texts are sorted by length first, as sentence-transformers does, so each decode holds
texts of similar length and long texts do not strand short ones.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_decodes"]


def plan_decodes(lengths: Sequence[int], *, max_tokens: int, max_texts: int) -> list[list[int]]:
    """Group text indices into decodes.

    Args:
        lengths: Token count of each text (each at least 1 and at most ``max_tokens``).
        max_tokens: Token budget of one decode.
        max_texts: Most sequences in one decode.

    Returns:
        Lists of indices into ``lengths``; every index appears exactly once. The caller restores order by index.

    Raises:
        ValueError: a length is outside ``1..max_tokens`` (the caller validates inputs before planning).
    """
    if max_tokens < 1 or max_texts < 1:
        raise ValueError("max_tokens and max_texts must be >= 1")
    for i, n in enumerate(lengths):
        if not 1 <= n <= max_tokens:
            raise ValueError(f"text {i} has {n} tokens; a decode holds 1..{max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if current and (used + n > max_tokens or len(current) >= max_texts):
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups
