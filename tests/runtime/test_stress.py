"""Concurrency stress: threads and asyncio tasks on one engine; results equal the single-threaded reference.

The default variants run for a few seconds; ``make stress`` runs the soak variants (``@pytest.mark.stress``).
The only timing assertion is a generous bound on event-loop lag (the loop must not be blocked by embedding).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embellama import EmbeddingEngine, ModelConfig
from tests.conftest import BATCH_TOL
from tests.fixtures.texts import BASE

pytestmark = pytest.mark.timeout(900)

TEXTS = [*BASE, *(f"stress text {i}: {BASE[i % len(BASE)]}" for i in range(70))]
MAX_LOOP_LAG = 0.5  # seconds; generous for a loaded 2-core machine
TOL = BATCH_TOL  # batch composition and thread counts change the last bits, never more


@pytest.fixture(scope="module")
def stress_engine(model_path: Path) -> Iterator[EmbeddingEngine]:
    with EmbeddingEngine(cache_size=0, chunk_size=4) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="s", n_workers=2))
        yield eng


@pytest.fixture(scope="module")
def reference(stress_engine: EmbeddingEngine) -> dict[str, np.ndarray]:
    """Each text embedded alone, one at a time."""
    return {t: stress_engine.embed("s", t, output="numpy") for t in TEXTS}


def _check(texts: list[str], rows: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    expected = np.stack([reference[t] for t in texts])
    np.testing.assert_allclose(rows, expected, atol=TOL)


def _thread_load(
    engine: EmbeddingEngine, reference: dict[str, np.ndarray], seed: int, until: float, counts: list[int]
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        texts = rng.sample(TEXTS, rng.randint(1, 12))
        if rng.random() < 0.3:
            rows = np.asarray([engine.embed("s", t) for t in texts[:2]])
            texts = texts[:2]
        else:
            rows = engine.embed_batch("s", texts, output="numpy")
        _check(texts, rows, reference)
        counts[seed] += len(texts)


async def _async_load(engine: EmbeddingEngine, reference: dict[str, np.ndarray], seed: int, until: float) -> int:
    rng = random.Random(1000 + seed)
    done = 0
    while time.monotonic() < until:
        texts = rng.sample(TEXTS, rng.randint(1, 4))
        if len(texts) == 1:
            rows = np.asarray([await engine.aembed("s", texts[0], output="numpy")])
        else:
            rows = await engine.aembed_batch("s", texts, output="numpy")
        _check(texts, rows, reference)
        done += len(texts)
    return done


async def _ticker(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(period)
        lags.append(loop.time() - before - period)


async def _run(
    engine: EmbeddingEngine, reference: dict[str, np.ndarray], seconds: float, n_threads: int, n_tasks: int
) -> tuple[int, int, float]:
    until = time.monotonic() + seconds
    counts = [0] * n_threads
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(stop, lags))
    with ThreadPoolExecutor(n_threads) as pool:
        loop = asyncio.get_running_loop()
        thread_runs = [
            loop.run_in_executor(pool, _thread_load, engine, reference, i, until, counts) for i in range(n_threads)
        ]
        per_task = await asyncio.wait_for(
            asyncio.gather(*(_async_load(engine, reference, i, until) for i in range(n_tasks))), seconds + 300
        )
        await asyncio.wait_for(asyncio.gather(*thread_runs), 300)
    stop.set()
    await ticker
    return sum(counts), sum(per_task), max(lags, default=0.0)


async def test_threads_and_tasks_on_one_engine(
    stress_engine: EmbeddingEngine, reference: dict[str, np.ndarray]
) -> None:
    threaded, tasked, lag = await _run(stress_engine, reference, seconds=8, n_threads=3, n_tasks=200)
    print(f"\nstress 8 s: {threaded} texts from 3 threads, {tasked} from 200 tasks; max loop lag {lag * 1000:.1f} ms")
    assert threaded > 0 and tasked > 0
    assert lag < MAX_LOOP_LAG, f"event loop blocked for {lag:.3f} s"


@pytest.mark.stress
async def test_soak_threads_and_tasks(stress_engine: EmbeddingEngine, reference: dict[str, np.ndarray]) -> None:
    threaded, tasked, lag = await _run(stress_engine, reference, seconds=120, n_threads=6, n_tasks=500)
    print(f"\nsoak 120 s: {threaded} texts from 6 threads, {tasked} from 500 tasks; max loop lag {lag * 1000:.1f} ms")
    assert lag < MAX_LOOP_LAG


async def test_loop_lag_while_embedding_a_large_batch(stress_engine: EmbeddingEngine) -> None:
    """One big batch awaited on the loop: the ticker keeps ticking."""
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(stop, lags))
    rows = await asyncio.wait_for(stress_engine.aembed_batch("s", TEXTS * 3, output="numpy"), 300)
    stop.set()
    await ticker
    assert rows.shape == (len(TEXTS) * 3, 384)
    lag = max(lags, default=0.0)
    print(f"\nmax loop lag during a {len(TEXTS) * 3}-text batch: {lag * 1000:.1f} ms over {len(lags)} ticks")
    assert len(lags) > 0 and lag < MAX_LOOP_LAG


def test_process_isolation_under_concurrency(model_path: Path, reference: dict[str, np.ndarray]) -> None:
    with EmbeddingEngine(cache_size=0, chunk_size=4) as eng:
        eng.load_model(model_path=model_path, model_name="s", isolation="process", n_workers=2)
        counts = [0] * 4
        until = time.monotonic() + 5
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(_thread_load, eng, reference, i, until, counts) for i in range(4)]
            for run in runs:
                run.result(timeout=300)  # re-raises a mismatch found in a thread
    assert sum(counts) > 0
