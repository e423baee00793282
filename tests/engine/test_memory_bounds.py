"""Memory held after a request is bounded by what its vectors need (issue 18, defect 1), prompts are checked like
inputs (defect 9), and identical texts in one request share one vector (issue 21, item 5).

RSS is measured in a fresh subprocess (nothing else of the test session in its heap), after a warm-up that
allocates what every later request reuses (tokenizer buffers, the decode context, numpy's and glibc's pools).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from embellama import EmbeddingEngine, InvalidInputError, ModelConfig
from embellama.engine.cache import ENTRY_OVERHEAD, EmbeddingCache
from embellama.engine.request import Request
from embellama.texts import PROMPT_BYTES_PER_TOKEN
from tests.conftest import MODEL_NAME

LIMIT = 256  # the default model's input limit


def _run(script: str, timeout: float) -> dict[str, float]:
    """Run ``script`` in a fresh interpreter (same PYTHONPATH) and return the JSON it prints last."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


_RSS_PRELUDE = """
import gc, json, os, sys, time
import psutil
from embellama import EmbeddingEngine, ModelConfig, InvalidInputError
proc = psutil.Process()
def rss():
    gc.collect()
    return proc.memory_info().rss / 1e6
engine = EmbeddingEngine()
engine.load_model(ModelConfig(model_path=sys.argv[1] if len(sys.argv) > 1 else {path!r}, model_name="m",
                              long_text_mode="truncate"))
"""


def test_distinct_long_texts_pin_only_their_vectors(model_path: Path) -> None:
    """200 distinct 256 KiB texts through the default (cached) engine: RSS grows by less than 20 MB. It grew by
    the texts themselves when the cache kept them as keys (+213 MB for 200 texts of 1 MiB: see docs/memory.md);
    the 200 vectors and their entries are 380 KB."""
    script = (
        _RSS_PRELUDE.format(path=str(model_path))
        + """
words = "llamas graze quietly on the high plains of the andes while embeddings are computed".split()
base = " ".join(words[i % len(words)] for i in range(44_000))  # ~256 KiB of ASCII words
def texts(start, n):
    return [f"document {i} " + base for i in range(start, start + n)]
for _ in range(2):  # warm-up: tokenizer buffers, decode context, allocator pools
    engine.embed_batch("m", texts(10_000, 4))
engine.clear_cache()
before = rss()
started = time.perf_counter()
for start in range(0, 200, 4):
    engine.embed_batch("m", texts(start, 4), output="numpy")
seconds = time.perf_counter() - started
after = rss()
stats = engine.cache_stats()
engine.close()
print(json.dumps({"grown_mb": after - before, "seconds": seconds, "entries": stats.size, "bytes": stats.bytes}))
"""
    )
    out = _run(script, timeout=600)
    print(f"\n200 x 256 KiB texts: RSS +{out['grown_mb']:.1f} MB in {out['seconds']:.1f} s, cache {out['bytes']} B")
    assert out["entries"] == 200 and out["bytes"] == 200 * (384 * 4 + ENTRY_OVERHEAD)
    assert out["grown_mb"] < 20


def test_whitespace_prompt_over_many_inputs_is_refused_at_once_and_pins_nothing(model_path: Path) -> None:
    """A 256 KiB whitespace prompt with 2,048 one-word inputs (46-76 s and +575 MB before) is refused before any
    work; a whitespace prompt at the size bound embeds in bounded time with the prompt-less vectors."""
    bound = PROMPT_BYTES_PER_TOKEN * LIMIT
    script = (
        _RSS_PRELUDE.format(path=str(model_path))
        + f"""
import numpy as np
inputs = [f"word{{i}}" for i in range(2048)]
plain = engine.embed_batch("m", inputs, output="numpy")
engine.embed_batch("m", inputs, output="numpy", prompt=" " * 100)
engine.clear_cache()
before = rss()
started = time.perf_counter()
try:
    engine.embed_batch("m", inputs, prompt=" " * 262_144)
    message = ""
except InvalidInputError as exc:
    message = str(exc)
refused_s = time.perf_counter() - started
after_refusal = rss()
started = time.perf_counter()
engine.embed_batch("m", inputs, output="numpy", prompt="x")  # the same request shape with a 1-byte prompt
small_s = time.perf_counter() - started
engine.clear_cache()
started = time.perf_counter()
bounded = engine.embed_batch("m", inputs, output="numpy", prompt=" " * {bound})
bounded_s = time.perf_counter() - started
engine.clear_cache()
after = rss()
engine.close()
print(json.dumps({{"message": message, "refused_s": refused_s, "refusal_mb": after_refusal - before,
                  "small_s": small_s, "bounded_s": bounded_s, "grown_mb": after - before,
                  "same": float(np.abs(bounded - plain).max())}}))
"""
    )
    out = _run(script, timeout=600)
    print(
        f"\nwhitespace prompt: refused in {out['refused_s'] * 1000:.1f} ms (+{out['refusal_mb']:.1f} MB); "
        f"{bound}-byte prompt x 2048: {out['bounded_s']:.2f} s vs {out['small_s']:.2f} s with a 1-byte prompt; "
        f"RSS +{out['grown_mb']:.1f} MB"
    )
    assert str(out["message"]).startswith("prompt (model 'm'): 262,144 UTF-8 bytes")
    assert out["refused_s"] < 0.5 and out["refusal_mb"] < 5
    assert out["same"] < 1e-6  # BERT's tokenizer drops whitespace: the prompt changes no token
    assert out["bounded_s"] < 3 * out["small_s"] + 1.0
    assert out["grown_mb"] < 20


def test_a_prompt_over_the_limit_is_an_invalid_input_naming_the_prompt(engine: EmbeddingEngine) -> None:
    """A prompt that alone reaches the limit fails the request (strict, collecting, or cutting long inputs) with
    an error about the prompt, not about each text; the engine keeps serving."""
    long_prompt = "word " * 300  # 302 tokens with [CLS] and [SEP], within the byte bound
    for call in (
        lambda: engine.embed(MODEL_NAME, "hello", prompt=long_prompt),
        lambda: engine.embed_batch(MODEL_NAME, ["a", "b"], prompt=long_prompt),
        lambda: engine.embed_batch(MODEL_NAME, ["a", "b"], prompt=long_prompt, on_error="collect"),
        lambda: engine.count_tokens(MODEL_NAME, ["a"], prompt=long_prompt),
    ):
        with pytest.raises(InvalidInputError) as info:
            call()
        err = info.value
        assert err.subject == "prompt" and err.index is None and (err.n_tokens, err.limit) == (302, LIMIT)
        assert str(err).startswith("prompt (model 'minilm'): 302 tokens")
    with pytest.raises(InvalidInputError, match=r"^prompt .*UTF-8 bytes, more than a prompt") as big:
        engine.embed(MODEL_NAME, "hello", prompt="x" * (PROMPT_BYTES_PER_TOKEN * LIMIT + 1))
    assert big.value.subject == "prompt"
    assert len(engine.embed(MODEL_NAME, "hello", prompt="word " * 200)) == 384  # 202 tokens: room left


def test_a_prompt_over_the_limit_is_refused_when_long_inputs_are_cut(model_path: Path) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="cut", long_text_mode="truncate", n_workers=1))
        with pytest.raises(InvalidInputError, match=r"^prompt") as info:
            eng.embed_batch("cut", ["a", "b"], prompt="word " * 260)
        assert info.value.n_tokens == 262
        assert len(eng.embed("cut", "still serving")) == 384


def test_a_prompt_is_validated_like_an_input(engine: EmbeddingEngine) -> None:
    """A lone surrogate in the prompt is refused as it is in an input (it used to be embedded)."""
    with pytest.raises(InvalidInputError) as in_input:
        engine.embed(MODEL_NAME, "bad \ud800")
    for call in (
        lambda: engine.embed(MODEL_NAME, "fine", prompt="query: \ud800 "),
        lambda: engine.embed_batch(MODEL_NAME, ["fine"], prompt="\ud800", on_error="collect"),
    ):
        with pytest.raises(InvalidInputError) as in_prompt:
            call()
        assert in_prompt.value.subject == "prompt"
        assert "not valid Unicode: surrogates not allowed" in str(in_prompt.value)
    assert in_input.value.reason.split(" at ")[0] == in_prompt.value.reason.split(" at ")[0]


def test_a_prompt_gives_the_tokens_and_vectors_of_prompt_plus_text(engine: EmbeddingEngine) -> None:
    """The model joins the prompt to each text as it tokenizes: the same tokens and vectors as the joined texts."""
    texts = ["what do llamas eat?", "Café au lait", "日本語のテキスト", "", "x" * 50]
    for prompt in ("query: ", "Represent this sentence for searching relevant passages:", "\u00e9"):
        joined = [prompt + t for t in texts]
        assert engine.count_tokens(MODEL_NAME, texts, prompt=prompt) == engine.count_tokens(MODEL_NAME, joined)
        np.testing.assert_array_equal(
            engine.embed_batch(MODEL_NAME, texts, prompt=prompt, output="numpy"),
            engine.embed_batch(MODEL_NAME, joined, output="numpy"),
        )


def test_nothing_keeps_a_text_after_its_request(model_path: Path) -> None:
    """The cache, the plan and the results drop every reference to the caller's texts (keys are digests)."""
    text = "a long document about llamas " * 20_000  # ~580 KB, cut to the limit
    with EmbeddingEngine() as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="m", long_text_mode="truncate", n_workers=1))
        refs = sys.getrefcount(text)
        eng.embed_batch("m", [text, "short", text])
        eng.embed("m", text, prompt="query: ")
        gc.collect()
        assert sys.getrefcount(text) == refs
        keys = list(eng.registry.cache._data)
        assert len(keys) == 3 and all(isinstance(k, bytes) and len(k) == 32 for k in keys)
        assert eng.cache_stats().bytes == 3 * (384 * 4 + ENTRY_OVERHEAD)


# ---------------------------------------------------------------------------- the cache's byte bound
def test_cache_evicts_by_bytes() -> None:
    vector = np.ones(100, dtype=np.float32)  # 400 bytes
    cost = vector.nbytes + ENTRY_OVERHEAD
    cache = EmbeddingCache(max_bytes=3 * cost)
    for key in (b"a", b"b", b"c"):
        cache.put(key, vector)
    assert cache.get(b"a") is not None  # b is now the least recently used
    cache.put(b"d", vector)
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    stats = cache.stats()
    assert (stats.size, stats.bytes, stats.max_bytes, stats.capacity) == (3, 3 * cost, 3 * cost, None)
    cache.put(b"wide", np.ones(400, dtype=np.float32))  # 1,600 bytes: room only for itself
    assert cache.stats().size == 1 and cache.stats().bytes == 1600 + ENTRY_OVERHEAD
    cache.put(b"huge", np.ones(1000, dtype=np.float32))  # larger than the whole bound: not stored
    assert cache.get(b"huge") is None and cache.get(b"wide") is not None
    cache.put(b"wide", vector)  # replacing an entry counts its new size only
    assert cache.stats().bytes == cost
    both = EmbeddingCache(2, max_bytes=10 * cost)  # the entry bound still applies
    for key in (b"a", b"b", b"c"):
        both.put(key, vector)
    assert both.stats().size == 2 and both.get(b"a") is None
    assert not EmbeddingCache(max_bytes=0).enabled and not EmbeddingCache(0).enabled


def test_cache_byte_count_covers_what_it_allocates() -> None:
    """The bytes counted per entry (vector + ENTRY_OVERHEAD) are at least what CPython allocates for it."""
    cache = EmbeddingCache()
    vector = np.ones(384, dtype=np.float32)
    keys = [bytes([i % 256, i // 256]) * 16 for i in range(5000)]  # 32-byte keys, as the engine's digests
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for key in keys:
            cache.put(key, vector, None, 12)
        used = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    used += sum(sys.getsizeof(k) for k in keys)  # made before tracing; a digest key is new per entry
    counted = cache.stats().bytes
    print(f"\ncache: {used / len(keys):.0f} B allocated per 384-d entry, {counted / len(keys):.0f} B counted")
    assert used <= counted < 1.3 * used


def test_engine_cache_honours_cache_bytes(model_path: Path) -> None:
    entry = 384 * 4 + ENTRY_OVERHEAD
    with EmbeddingEngine(cache_bytes=10 * entry) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="m", n_workers=1))
        eng.embed_batch("m", [f"text {i}" for i in range(25)])
        stats = eng.cache_stats()
        assert (stats.size, stats.bytes, stats.max_bytes) == (10, 10 * entry, 10 * entry)
        eng.embed_batch("m", [f"text {i}" for i in range(15, 25)])  # the 10 most recent: all hits
        assert eng.cache_stats().hits == 10
    with EmbeddingEngine(cache_bytes=0) as off:
        off.load_model(ModelConfig(model_path=model_path, model_name="m", n_workers=1))
        off.embed_batch("m", ["a", "b"])
        assert off.cache_stats().size == 0


# ---------------------------------------------------------------------------- identical texts in one request
def test_identical_texts_in_one_request_are_embedded_once_and_share_one_vector(model_path: Path) -> None:
    texts = ["alpha", "beta", "alpha", "gamma", "beta", "alpha"] * 20
    with EmbeddingEngine(cache_size=0, chunk_size=8) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="m", n_workers=2))
        rows = eng.embed_batch("m", texts, output="numpy")
        for text in set(texts):
            same = rows[[i for i, t in enumerate(texts) if t == text]]
            assert (same == same[0]).all()  # bit for bit
        plan = Request.embeddings(eng.registry, "m", texts).plan()
        assert sum(len(c) for c in plan.chunks) == 3 and len(plan.copies) == len(texts) - 3
        assert eng.count_tokens("m", texts) == 3 * len(texts)  # [CLS] word [SEP], every index counted
        progress: list[tuple[int, int]] = []
        eng.embed_batch("m", texts, progress=lambda d, t: progress.append((d, t)))
        assert progress[-1] == (len(texts), len(texts))
        single = eng.embed_batch("m", ["alpha"], output="numpy")[0]
        np.testing.assert_allclose(rows[0], single, atol=2e-3)


def test_a_duplicated_bad_text_names_the_first_index_or_each_index(model_path: Path) -> None:
    too_long = "word " * 300
    texts = ["ok", too_long, "fine", too_long, too_long]
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="m", n_workers=1))
        with pytest.raises(InvalidInputError) as first:
            eng.embed_batch("m", texts)
        assert first.value.index == 1 and first.value.n_tokens == 302
        collected = eng.embed_batch("m", texts, on_error="collect")
        assert sorted(collected.errors) == [1, 3, 4]
        assert all(collected.errors[i].index == i and collected.errors[i].n_tokens == 302 for i in (1, 3, 4))
        assert [e is None for e in collected.embeddings] == [False, True, False, True, True]
        bad_and_dup = eng.embed_batch("m", [1, "x", 1, "x"], on_error="collect")  # type: ignore[list-item]
        assert sorted(bad_and_dup.errors) == [0, 2] and bad_and_dup.embeddings[1] == bad_and_dup.embeddings[3]


def test_duplicates_of_cut_and_cached_texts_are_reported_and_counted(model_path: Path) -> None:
    long_text = "word " * 400
    with EmbeddingEngine() as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="m", long_text_mode="truncate", n_workers=1))
        first = Request.embeddings(eng.registry, "m", [long_text, "a", long_text], output="numpy")
        plan = first.plan()
        first.run()
        assert plan.truncated == {0: 402, 2: 402} and plan.tokens == 402 * 2 + 3
        request = Request.embeddings(eng.registry, "m", ["a", long_text, long_text, "a"], output="numpy")
        again = request.plan()  # from the cache
        assert again.chunks == [] and again.tokens == 402 * 2 + 3 * 2
        hits = eng.cache_stats().hits
        rows = request.run()
        assert eng.cache_stats().hits == hits and again.truncated == {1: 402, 2: 402}
        assert (rows[1] == rows[2]).all() and (rows[0] == rows[3]).all()
