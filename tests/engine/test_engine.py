"""EmbeddingEngine on the real default model: registry, sync/async twins, batching, cache, threads."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embellama import (
    BatchResult,
    ConfigurationError,
    EmbeddingEngine,
    EngineClosedError,
    InvalidInputError,
    ModelConfig,
    ModelNotFoundError,
)
from embellama.engine.planning import split as _split
from embellama.engine.request import Request
from tests.conftest import MODEL_NAME
from tests.fixtures.texts import varied_texts

TEXTS = varied_texts()


@pytest.fixture(scope="module")
def reference(engine: EmbeddingEngine) -> np.ndarray:
    """Each text embedded alone: what every batched / concurrent path must reproduce."""
    return np.stack([engine.embed(MODEL_NAME, t, output="numpy") for t in TEXTS])


def test_single_embed_shapes(engine: EmbeddingEngine) -> None:
    vec = engine.embed(MODEL_NAME, "hello world")
    assert isinstance(vec, list) and len(vec) == 384 and all(type(x) is float for x in vec)
    arr = engine.embed(MODEL_NAME, "hello world", output="numpy")
    assert arr.shape == (384,) and arr.dtype == np.float32
    assert np.linalg.norm(arr) == pytest.approx(1.0, abs=1e-5)


def test_batch_equals_single_and_keeps_order(engine: EmbeddingEngine, reference: np.ndarray) -> None:
    batch = engine.embed_batch(MODEL_NAME, TEXTS, output="numpy")
    assert batch.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(batch, reference, atol=2e-3)
    cos = (batch * reference).sum(1)
    assert cos.min() > 0.9999
    reversed_batch = engine.embed_batch(MODEL_NAME, TEXTS[::-1], output="numpy")
    np.testing.assert_allclose(reversed_batch[::-1], batch, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_list_output_and_empty_batch(engine: EmbeddingEngine) -> None:
    out = engine.embed_batch(MODEL_NAME, ["a", "b"])
    assert isinstance(out, list) and len(out) == 2 and isinstance(out[0][0], float)
    assert engine.embed_batch(MODEL_NAME, []) == []
    assert engine.embed_batch(MODEL_NAME, [], output="numpy").shape == (0, 384)
    with pytest.raises(ConfigurationError, match="output"):
        engine.embed_batch(MODEL_NAME, ["a"], output="tensor")  # type: ignore[arg-type]


def test_generator_input(engine: EmbeddingEngine) -> None:
    out = engine.embed_batch(MODEL_NAME, (t for t in ["x", "y", "z"]), output="numpy")
    assert out.shape == (3, 384)


def test_errors_name_the_index(engine: EmbeddingEngine) -> None:
    texts = [f"text {i}" for i in range(150)]
    texts[137] = "word " * 300
    with pytest.raises(InvalidInputError) as info:
        engine.embed_batch(MODEL_NAME, texts)  # 150 texts: four chunks, the error is in the last
    assert info.value.index == 137 and info.value.n_tokens == 302
    result = engine.embed_batch(MODEL_NAME, texts, on_error="collect", output="numpy")
    assert isinstance(result, BatchResult) and not result.ok
    assert list(result.errors) == [137] and result.errors[137].index == 137
    assert result.embeddings[137] is None and result.embeddings[0].shape == (384,)
    # still serving
    assert len(engine.embed(MODEL_NAME, "still fine")) == 384
    with pytest.raises(InvalidInputError) as single:
        engine.embed(MODEL_NAME, "word " * 300)
    assert single.value.index is None
    with pytest.raises(ConfigurationError, match="on_error"):
        engine.embed_batch(MODEL_NAME, ["a"], on_error="ignore")  # type: ignore[arg-type]


def test_unknown_model(engine: EmbeddingEngine) -> None:
    with pytest.raises(ModelNotFoundError, match="nope"):
        engine.embed("nope", "x")
    with pytest.raises(ModelNotFoundError):
        engine.unload_model("nope")


def test_progress_callback(engine: EmbeddingEngine) -> None:
    seen: list[tuple[int, int]] = []
    engine.embed_batch(MODEL_NAME, [f"t{i}" for i in range(150)], progress=lambda d, t: seen.append((d, t)))
    assert sorted(seen)[-1] == (150, 150) and len(seen) == 4  # 2 workers: 4 even chunks
    assert all(total == 150 for _, total in seen)


def test_many_threads_same_vectors(engine: EmbeddingEngine, reference: np.ndarray) -> None:
    def work(i: int) -> np.ndarray:
        return np.asarray(engine.embed(MODEL_NAME, TEXTS[i % len(TEXTS)], output="numpy"))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(200)))
    for i, vec in enumerate(results):
        np.testing.assert_allclose(vec, reference[i % len(TEXTS)], atol=2e-3)


async def test_async_twins(engine: EmbeddingEngine, reference: np.ndarray) -> None:
    loop_thread = threading.get_ident()
    vec = await engine.aembed(MODEL_NAME, TEXTS[3], output="numpy")
    np.testing.assert_allclose(vec, reference[3], atol=2e-3)
    results = await asyncio.gather(*(engine.aembed(MODEL_NAME, t, output="numpy") for t in TEXTS * 4))
    np.testing.assert_allclose(np.stack(results), np.concatenate([reference] * 4), atol=2e-3)
    batch = await engine.aembed_batch(MODEL_NAME, TEXTS, output="numpy")
    np.testing.assert_allclose(batch, reference, atol=2e-3)
    assert threading.get_ident() == loop_thread
    with pytest.raises(InvalidInputError):
        await engine.aembed(MODEL_NAME, "word " * 300)
    with pytest.raises(InvalidInputError):
        await engine.aembed(MODEL_NAME, 5)  # type: ignore[arg-type]


def test_registry_and_load_unload_cycles(model_path: Path) -> None:
    with EmbeddingEngine() as eng:
        for cycle in range(5):
            info = eng.load_model(ModelConfig(model_path=model_path, model_name="cyc", pooling="cls"))
            assert info.pooling == "cls" and set(eng.models) == {"cyc"}
            assert eng.model_info("cyc").dimensions == 384
            assert len(eng.embed("cyc", f"cycle {cycle}")) == 384
            with pytest.raises(ConfigurationError, match="already loaded"):
                eng.load_model(model_path=model_path, model_name="cyc")
            eng.unload_model("cyc")
            assert eng.models == {}
        with pytest.raises(ConfigurationError, match="either"):
            eng.load_model(ModelConfig(model_path=model_path), model_name="x")


def test_ensure_model_shares_identical_configs(model_path: Path) -> None:
    with EmbeddingEngine() as eng:
        a = eng.registry.ensure_model(ModelConfig(model_path=model_path, model_name="shared"))
        b = eng.registry.ensure_model(ModelConfig(model_path=model_path, model_name="shared"))
        c = eng.registry.ensure_model(ModelConfig(model_path=model_path, model_name="shared", pooling="max"))
        assert a == b == "shared" and c == "shared#2"
        assert len(eng.models) == 2


def test_cache_hits_and_identity(model_path: Path) -> None:
    with EmbeddingEngine(cache_size=100) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="c"))
        first = eng.embed_batch("c", ["alpha", "beta"], output="numpy")
        second = eng.embed_batch("c", ["beta", "gamma", "alpha"], output="numpy")
        stats = eng.cache_stats()
        assert (stats.hits, stats.misses) == (2, 3)
        np.testing.assert_array_equal(second[0], first[1])
        np.testing.assert_array_equal(second[2], first[0])
        second[0][:] = 0  # callers own their arrays; the cache is unaffected
        np.testing.assert_array_equal(eng.embed("c", "beta", output="numpy"), first[1])
        eng.clear_cache()
        assert eng.cache_stats().size == 0


def test_two_workers_give_the_same_vectors(model_path: Path, reference: np.ndarray) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        info = eng.load_model(ModelConfig(model_path=model_path, model_name="w2", n_workers=2))
        assert info.n_workers == 2 and info.n_threads >= 1
        out = eng.embed_batch("w2", TEXTS * 3, output="numpy")
        np.testing.assert_allclose(out, np.concatenate([reference] * 3), atol=2e-3)


def test_close_is_idempotent_and_final(model_path: Path) -> None:
    eng = EmbeddingEngine()
    eng.load_model(ModelConfig(model_path=model_path, model_name="z"))
    assert "z" in repr(eng)
    eng.close()
    eng.close()
    assert eng.is_closed and "closed" in repr(eng)
    with pytest.raises(EngineClosedError):
        eng.embed("z", "x")
    with pytest.raises(EngineClosedError):
        eng.load_model(model_path=model_path)
    with pytest.raises(EngineClosedError), eng:
        pass


async def test_async_context_manager(model_path: Path) -> None:
    async with EmbeddingEngine() as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="a"))
        assert len(await eng.aembed("a", "async")) == 384
    assert eng.is_closed


def test_submit_low_level(engine: EmbeddingEngine) -> None:
    result = engine.registry.submit(MODEL_NAME, ["x", "word " * 300], collect_errors=True).result(timeout=60)
    assert np.isfinite(result.vectors[0]).all() and np.isnan(result.vectors[1]).all()
    assert result.errors[1].index == 1 and result.errors[1].n_tokens == 302
    with pytest.raises(InvalidInputError) as info:
        engine.registry.submit(MODEL_NAME, ["x", 3])  # type: ignore[list-item]
    assert info.value.index == 1


def test_concurrent_loads_leave_sys_stderr_alone(model_path: Path) -> None:
    # regression: loading swapped sys.stderr from worker threads; two concurrent loads left it pointing at a
    # discarded buffer, and every later message on stderr (progress bars, warnings) vanished
    before = sys.stderr
    with EmbeddingEngine() as eng:
        threads = [
            threading.Thread(target=eng.load_model, kwargs={"model_path": model_path, "model_name": f"s{i}"})
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(eng.models) == 4
    assert sys.stderr is before


def test_close_stops_a_long_round_between_decodes(model_path: Path) -> None:
    eng = EmbeddingEngine(cache_size=0)
    eng.load_model(ModelConfig(model_path=model_path, model_name="long", n_workers=1))
    # one job of 5,000 texts is one worker round (hundreds of decodes); close must not wait for all of them
    future = eng.registry.submit("long", [f"text number {i}" for i in range(5000)])
    deadline = time.monotonic() + 60
    while not future.running() and time.monotonic() < deadline:  # wait until the worker has taken the job
        time.sleep(0.001)
    eng.close()
    with pytest.raises(EngineClosedError, match="closed while serving"):
        future.result(timeout=60)


def test_a_modest_batch_is_shared_between_workers(model_path: Path) -> None:
    # frameworks send batches of 10-64 texts one after another: each must reach every worker, not just one
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="two", n_workers=2, n_threads=1))
        plan = Request.embeddings(eng.registry, "two", [f"t{i}" for i in range(40)]).plan()
        assert [len(c) for c in plan.chunks] == [20, 20]
        small = Request.embeddings(eng.registry, "two", [f"t{i}" for i in range(10)]).plan()
        assert [len(c) for c in small.chunks] == [10]  # not cut below one decode's worth (8 texts)
        big = Request.embeddings(eng.registry, "two", [f"t{i}" for i in range(200)]).plan()
        assert [len(c) for c in big.chunks] == [50, 50, 50, 50]  # balanced, not 64+64+64+8


@given(n=st.integers(0, 3000), workers=st.integers(1, 4), most=st.integers(8, 128), least=st.integers(1, 16))
def test_split_is_balanced_and_complete(n: int, workers: int, most: int, least: int) -> None:
    indices = list(range(n))
    chunks = _split(indices, workers, most, least)
    assert [i for c in chunks for i in c] == indices
    if n:
        sizes = [len(c) for c in chunks]
        assert max(sizes) <= most and max(sizes) - min(sizes) <= 1
        # every worker gets a share unless that would cut chunks below one decode's worth
        assert len(chunks) % workers == 0 or len(chunks) >= n // least or len(chunks) == -(-n // most)


def test_lone_queries_borrow_idle_cores_only(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import embellama.runtime.backends as worker_module
    from embellama.cpu import idle_cores, usable_cores
    from embellama.model.embedding import EmbeddingModel

    assert 0 <= idle_cores() <= usable_cores()
    chosen: list[int] = []
    set_threads = EmbeddingModel.set_threads

    def spy(self: EmbeddingModel, n_threads: int) -> None:
        chosen.append(n_threads)
        set_threads(self, n_threads)

    monkeypatch.setattr(EmbeddingModel, "set_threads", spy)
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="lat", n_workers=2))
        monkeypatch.setattr(worker_module, "idle_cores", lambda: 2)
        reference = eng.embed("lat", "a lone query", output="numpy")
        assert chosen == [2]  # the worker borrowed its idle sibling's core
        chosen.clear()
        monkeypatch.setattr(worker_module, "idle_cores", lambda: 1)  # another process runs on one core
        again = eng.embed("lat", "a lone query", output="numpy")
        np.testing.assert_allclose(again, reference, atol=1e-5)  # same vector whatever the thread count
        assert chosen == [1]
        chosen.clear()
        monkeypatch.setattr(worker_module, "idle_cores", lambda: 2)
        eng.embed_batch("lat", [f"batch text {i}" for i in range(200)])  # 200 texts: never a lone request
        assert chosen and set(chosen) == {1}
    with EmbeddingEngine(cache_size=0) as eng:  # explicit n_threads is respected as given
        chosen.clear()
        eng.load_model(ModelConfig(model_path=model_path, model_name="fixed", n_workers=2, n_threads=1))
        eng.embed("fixed", "a lone query")
        assert chosen == [1]
