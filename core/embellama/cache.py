"""A bounded, thread-safe LRU cache of embeddings with hit/miss statistics."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CacheStats", "EmbeddingCache"]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of cache counters."""

    hits: int
    misses: int
    size: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class EmbeddingCache:
    """LRU map from ``(model fingerprint, output options, text)`` to a read-only vector."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Hashable, npt.NDArray[np.float32]] = OrderedDict()
        self._cut: dict[Hashable, int] = {}  # key -> token count before the cut, for texts the model truncated
        self._tokens: dict[Hashable, int] = {}  # key -> the text's token count (usage of answers from the cache)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get(self, key: Hashable) -> npt.NDArray[np.float32] | None:
        """The cached vector for ``key``, or None (counted as a miss)."""
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable) -> tuple[npt.NDArray[np.float32], int | None, int] | None:
        """The cached vector for ``key``, the text's token count before a cut if the model cut it, and its token
        count; None on a miss."""
        if self.capacity == 0:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return value, self._cut.get(key), self._tokens.get(key, 0)

    def put(self, key: Hashable, vector: npt.NDArray[np.float32], cut_from: int | None = None, tokens: int = 0) -> None:
        """Store a copy of ``vector`` under ``key`` (``cut_from``: the text's token count before truncation;
        ``tokens``: its token count), evicting the least recently used entry when full."""
        if self.capacity == 0:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        with self._lock:
            self._data[key] = stored
            self._data.move_to_end(key)
            if cut_from is not None:
                self._cut[key] = cut_from
            if tokens:
                self._tokens[key] = tokens
            while len(self._data) > self.capacity:
                old, _ = self._data.popitem(last=False)
                self._cut.pop(old, None)
                self._tokens.pop(old, None)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self._cut.clear()
            self._tokens.clear()
            self._hits = self._misses = 0

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock (another thread may have held the parent's at the fork)."""
        self._lock = threading.Lock()

    def stats(self) -> CacheStats:
        """Current counters."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._data), self.capacity)
