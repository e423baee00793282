"""Waiting for a request's jobs — in the caller's thread or on its event loop — and reporting its progress.

Both waits stop early when a job fails (its not-yet-started siblings are cancelled) and raise the failure of the
earliest failed job; progress callbacks run in the waiting thread and count only texts of jobs that succeeded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from embellama.engine.planning import Plan, Steps
from embellama.errors import EngineClosedError
from embellama.types import JobResult

__all__ = ["ProgressCallback", "Progress", "adrive", "await_jobs", "in_thread", "wait_jobs"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with the texts finished so far, in the caller's thread (or event loop)."""


class Progress:
    """Counts finished texts for a request and reports them in the caller's thread."""

    def __init__(self, plan: Plan, futures: list[Future[JobResult]], callback: ProgressCallback | None) -> None:
        self.total = plan.n
        self.done = plan.done_at_start
        self.sizes = dict(zip(futures, plan.chunk_sizes(), strict=True))
        self.callback = callback
        if callback is not None and not futures:
            callback(self.total, self.total)

    def count(self, succeeded: Iterable[Future[JobResult]]) -> None:
        """Add the texts of jobs that succeeded and report the new total."""
        for f in succeeded:
            self.done += self.sizes[f]
            if self.callback is not None:
                self.callback(self.done, self.total)


def _cancel(futures: Iterable[Future[Any]]) -> None:
    for f in futures:
        f.cancel()


def _results(futures: list[Future[JobResult]]) -> list[JobResult]:
    """Every job's result, or the failure of the earliest failed job (chunks are in index order)."""
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    if any(f.cancelled() for f in futures):
        raise EngineClosedError("the request was cancelled before it was served")
    return [f.result() for f in futures]


def wait_jobs(futures: list[Future[JobResult]], tracker: Progress | None) -> list[JobResult]:
    """Wait for a request's jobs in the caller's thread, reporting progress; stop early on a failure."""
    if len(futures) == 1:  # a lone query: the plain wait is the cheapest (it is most of a 1 ms request)
        try:
            concurrent.futures.wait(futures)
        except BaseException:
            _cancel(futures)
            raise
        _finished(futures, tracker)
        return _results(futures)
    pending = set(futures)
    try:
        while pending:
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            if _finished(done, tracker):
                _cancel(pending)
                concurrent.futures.wait(pending)
                break
    except BaseException:
        _cancel(futures)
        raise
    return _results(futures)


async def await_jobs(futures: list[Future[JobResult]], tracker: Progress | None) -> list[JobResult]:
    """:func:`wait_jobs` on an event loop; cancelling the awaiting task cancels the jobs not yet started."""
    if len(futures) == 1:  # a lone query: one loop future woken by the job, no asyncio.wait machinery
        return await _await_one(futures, tracker)
    waiting = {asyncio.wrap_future(f): f for f in futures}
    pending = set(waiting)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for d in done:  # mark failures as seen: the concurrent futures carry them to the caller
                if not d.cancelled():
                    d.exception()
            if _finished([waiting[d] for d in done], tracker):
                _cancel(waiting[p] for p in pending)
                if pending:
                    await asyncio.wait(pending)
                    for p in pending:
                        if not p.cancelled():
                            p.exception()
                break
    except BaseException:
        _cancel(futures)
        raise
    return _results(futures)


async def _await_one(futures: list[Future[JobResult]], tracker: Progress | None) -> list[JobResult]:
    """Await a single job with the least work on the loop: a plain loop future the job's completion sets (from the
    worker thread, through ``call_soon_threadsafe``). It is never cancelled by the job, so a cancelled or failed
    job is told apart from a cancelled caller: the former raises the job's error, the latter cancels the job."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_job: Future[JobResult]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            loop.call_soon_threadsafe(_set_once, woken)

    futures[0].add_done_callback(wake)
    try:
        await woken
    except BaseException:
        _cancel(futures)
        raise
    _finished(futures, tracker)
    return _results(futures)


def _set_once(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _finished(done: Iterable[Future[JobResult]], tracker: Progress | None) -> bool:
    failed = [f for f in done if f.cancelled() or f.exception() is not None]
    if tracker is not None:
        tracker.count(f for f in done if f not in failed)
    return bool(failed)


def in_thread(fn: Callable[[], Any], name: str = "embellama-call") -> Future[Any]:
    """Run ``fn`` on a new daemon thread; the returned future gets its result (await it with ``wrap_future``).

    Used where a blocking step (a model load, joining workers) must not run on an event loop, without borrowing the
    loop's default executor.
    """
    future: Future[Any] = Future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


SLICE_S = 0.0005
"""How long :func:`adrive` runs a generator's slices before it lets the event loop run (0.5 ms)."""


async def adrive(steps: Steps) -> Any:
    """Run a planning generator, letting the event loop run whenever its slices have taken :data:`SLICE_S`.

    Yielding after every slice cost a loop iteration each (a query's plan and answer are a few slices of a few
    microseconds): a 1 ms budget-free yield per slice made a lone query do more loop work than the query itself.
    """
    start = time.perf_counter()
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        if time.perf_counter() - start >= SLICE_S:
            await asyncio.sleep(0)
            start = time.perf_counter()
