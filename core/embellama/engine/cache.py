"""A thread-safe LRU cache of embeddings, bounded in bytes (and optionally in entries), with statistics.

Keys are small digests (the engine keys on a BLAKE2b digest of the model identity, the prompt and the text, see
:func:`embellama.engine.planning.key_prefix`), never the texts themselves: what the cache holds is what its vectors
need,
plus a fixed per-entry overhead, whatever the size of the texts it answers for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from embellama.config import DEFAULT_CACHE_BYTES

__all__ = ["ENTRY_OVERHEAD", "CacheStats", "EmbeddingCache"]

ENTRY_OVERHEAD = 400
"""Bytes counted per entry besides its vector: the 32-byte digest key, the array object, the entry tuple and the
ordered dict's slot and node (measured with ``tracemalloc``: 325-365 bytes on CPython 3.11; a test checks that
this covers them)."""


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of cache counters."""

    hits: int
    misses: int
    size: int
    """Entries held."""
    capacity: int | None
    """The entry bound (``cache_size``; None: bounded by bytes only)."""
    bytes: int = 0
    """Bytes held, as counted against ``max_bytes`` (vectors plus :data:`ENTRY_OVERHEAD` per entry)."""
    max_bytes: int = 0
    """The byte bound (``cache_bytes``)."""

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _Entry(NamedTuple):
    vector: npt.NDArray[np.float32]
    cut_from: int | None
    """The text's token count before the cut, for a text the model truncated."""
    tokens: int
    """The text's token count (the usage of answers from the cache)."""


class EmbeddingCache:
    """LRU map from a digest of ``(model fingerprint, output options, prompt, text)`` to a read-only vector.

    Args:
        capacity: Most entries; 0 disables the cache. Defaults to None (bounded by ``max_bytes`` only).
        max_bytes: Most bytes held, counting each vector and :data:`ENTRY_OVERHEAD` per entry; 0 disables the
            cache. Defaults to :data:`DEFAULT_CACHE_BYTES`.
    """

    def __init__(self, capacity: int | None = None, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def enabled(self) -> bool:
        """Whether anything can be stored."""
        return self.capacity != 0 and self.max_bytes > 0

    def get(self, key: Hashable) -> npt.NDArray[np.float32] | None:
        """The cached vector for ``key``, or None (counted as a miss)."""
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable) -> tuple[npt.NDArray[np.float32], int | None, int] | None:
        """The cached vector for ``key``, the text's token count before a cut if the model cut it, and its token
        count; None on a miss."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return entry

    def put(self, key: Hashable, vector: npt.NDArray[np.float32], cut_from: int | None = None, tokens: int = 0) -> None:
        """Store a copy of ``vector`` under ``key`` (``cut_from``: the text's token count before truncation;
        ``tokens``: its token count), evicting the least recently used entries while over a bound. A vector
        larger than the whole byte bound is not stored."""
        if not self.enabled:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        cost = stored.nbytes + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.vector.nbytes + ENTRY_OVERHEAD
            self._data[key] = _Entry(stored, cut_from, tokens)
            self._bytes += cost
            while self._bytes > self.max_bytes or (self.capacity is not None and len(self._data) > self.capacity):
                _, evicted = self._data.popitem(last=False)
                self._bytes -= evicted.vector.nbytes + ENTRY_OVERHEAD

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self._hits = self._misses = 0

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock (another thread may have held the parent's at the fork)."""
        self._lock = threading.Lock()

    def stats(self) -> CacheStats:
        """Current counters."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._data), self.capacity, self._bytes, self.max_bytes)
