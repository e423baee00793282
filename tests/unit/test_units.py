"""Pure logic: decode planning, GGUF header, cache (the heads' math is in tests/unit/heads)."""

from __future__ import annotations

import queue
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embellama import ModelLoadError, ModelNotFoundError
from embellama.engine.cache import EmbeddingCache
from embellama.files.gguf import check_model_file, read_header
from embellama.model.batching import plan_decodes


@given(
    lengths=st.lists(st.integers(1, 64), max_size=200),
    max_tokens=st.integers(64, 512),
    max_texts=st.integers(1, 16),
)
def test_plan_decodes_covers_every_text_within_limits(lengths: list[int], max_tokens: int, max_texts: int) -> None:
    groups = plan_decodes(lengths, max_tokens=max_tokens, max_texts=max_texts)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    for g in groups:
        assert 1 <= len(g) <= max_texts
        assert sum(lengths[i] for i in g) <= max_tokens


def test_plan_decodes_rejects_impossible_input() -> None:
    assert plan_decodes([], max_tokens=8, max_texts=2) == []
    with pytest.raises(ValueError):
        plan_decodes([9], max_tokens=8, max_texts=2)
    with pytest.raises(ValueError):
        plan_decodes([0], max_tokens=8, max_texts=2)
    with pytest.raises(ValueError):
        plan_decodes([1], max_tokens=0, max_texts=2)


def test_cache_is_lru_and_counts() -> None:
    cache = EmbeddingCache(2)
    a, b, c = (np.full(3, x, dtype=np.float32) for x in (1, 2, 3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", c)  # evicts b
    assert cache.get("b") is None
    got = cache.get("c")
    assert got is not None and not got.flags.writeable
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size, stats.capacity) == (2, 1, 2, 2)
    assert stats.hit_rate == pytest.approx(2 / 3)
    cache.clear()
    assert cache.stats().size == 0 and cache.stats().hit_rate == 0.0
    off = EmbeddingCache(0)
    off.put("a", a)
    assert off.get("a") is None


def test_gguf_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        check_model_file(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="directory"):
        check_model_file(tmp_path)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        check_model_file(empty)
    text = tmp_path / "text.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        check_model_file(text)
    bad_version = tmp_path / "v9.gguf"
    bad_version.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ModelLoadError, match="version"):
        read_header(bad_version)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 5) + b"\x03\x00")
    with pytest.raises(ModelLoadError, match="malformed"):
        read_header(cut)


def test_job_queue_wakes_the_newest_waiter() -> None:
    import threading
    import time

    from embellama.runtime.scheduler import JobQueue

    q = JobQueue()
    got: dict[str, object] = {}

    def take(name: str) -> None:
        got[name] = q.get(timeout=30)

    first = threading.Thread(target=take, args=("first",))
    first.start()
    while q.waiting() < 1:
        time.sleep(0.001)
    second = threading.Thread(target=take, args=("second",))
    second.start()
    while q.waiting() < 2:
        time.sleep(0.001)
    q.put("job 1")
    second.join(timeout=30)
    assert got == {"second": "job 1"}  # the worker that started waiting last took it
    q.put("job 2")
    first.join(timeout=30)
    assert got == {"second": "job 1", "first": "job 2"}  # jobs stay FIFO, nobody is left waiting
    q.put("a")
    q.put("b")
    assert q.get(timeout=1) == "a" and q.get_nowait() == "b" and q.empty()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.waiting() == 0
