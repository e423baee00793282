"""The event loop's share of an async request: a lone job is awaited through one loop future (its three endings
told apart), and planning slices yield to the loop by time budget, not after every slice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any

import pytest

from embellama.engine.request import SLICE_S, adrive, await_jobs
from embellama.errors import EngineClosedError


def _later(fn: Any, delay: float = 0.02) -> None:
    threading.Timer(delay, fn).start()


async def test_a_lone_job_result_arrives_from_a_worker_thread() -> None:
    job: Future[Any] = Future()
    _later(lambda: job.set_result("vectors"))
    assert await await_jobs([job], None) == ["vectors"]


async def test_a_lone_job_failure_is_raised_as_itself() -> None:
    job: Future[Any] = Future()
    _later(lambda: job.set_exception(ValueError("bad text")))
    with pytest.raises(ValueError, match="bad text"):
        await await_jobs([job], None)


async def test_a_lone_job_cancelled_by_the_engine_is_an_engine_error_not_a_cancelled_caller() -> None:
    job: Future[Any] = Future()
    _later(job.cancel)
    with pytest.raises(EngineClosedError):
        await await_jobs([job], None)


async def test_cancelling_the_caller_cancels_its_lone_job() -> None:
    job: Future[Any] = Future()
    task = asyncio.ensure_future(await_jobs([job], None))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.cancelled()


async def test_slices_yield_by_time_budget() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    def tiny() -> Generator[None, None, int]:
        for _ in range(100):
            yield
        return 7

    def slow() -> Generator[None, None, int]:
        for _ in range(5):
            time.sleep(SLICE_S * 2)
            yield
        return 8

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    before = ticks
    assert await adrive(tiny()) == 7
    tiny_ticks = ticks - before
    before = ticks
    assert await adrive(slow()) == 8
    slow_ticks = ticks - before
    ticker.cancel()
    assert tiny_ticks <= 2  # 100 microsecond slices: no loop iteration each
    assert slow_ticks >= 4  # slices over the budget: the loop runs between them


def test_loop_lag_benchmark_statistics_and_table() -> None:
    from benchmarks.loop_lag import lag_stats, markdown

    stats = lag_stats([float(i) for i in range(100)])
    assert (stats["p50"], stats["p99"], stats["max"]) == (50.0, 99.0, 99.0)
    row = {"workload": "concurrent", "n": 200, "busy": True, "peer": "embellama", "seconds": 1.0}
    table = markdown([row | {"lag": stats | {"loop_cpu_ms": 3.0}}], reps=1)
    assert "| concurrent (200) | busy | embellama | 50.00 | 99.00 | 99.0 | 3.0 | 1.000 |" in table
