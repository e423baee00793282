"""Hardening of the engine: reload races, files replaced or truncated on disk, event-loop lag on huge async
batches, file fingerprints, progress reporting, ``str`` subclasses under process isolation, and the messages of
load/close/unload races and file-descriptor exhaustion.

Every test runs the real default model on real files; waits are bounded and generous (the machine is shared).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from embellama import EmbeddingEngine, EngineClosedError, ModelNotFoundError
from embellama.engine.planning import split
from embellama.files import identity
from embellama.model import native as _native
from embellama.model.quantize import quantize_model
from embellama.runtime.isolation import ProcessBackend
from embellama.types import Job
from tests.conftest import BATCH_TOL

pytestmark = pytest.mark.timeout(300)

DIMS = 384
SMALL = 128
TOL = BATCH_TOL  # batch composition and thread counts change the last bits, never more
SUBPROCESS_TIMEOUT = 120


def _renormalized_prefix(rows: np.ndarray, dims: int) -> np.ndarray:
    """What a Matryoshka model with ``dimensions=dims`` returns, from full-width normalized rows."""
    head = rows[:, :dims]
    out: np.ndarray = head / np.linalg.norm(head, axis=1, keepdims=True)
    return out


def _run_script(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
    )


# --------------------------------------------------------------------------- 4. reload race
def test_reload_race_never_mixes_widths_or_vectors(model_path: Path) -> None:
    """Unload/reload one name with other dimensions while threads embed: every answer (and every cache entry)
    belongs to the model that served it, and no shape error escapes."""
    anchor = "the anchor text every request shares"
    served: list[tuple[list[str], np.ndarray]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    engine = EmbeddingEngine(cache_size=10_000, chunk_size=2)
    try:
        engine.load_model(model_path=model_path, model_name="m", n_workers=1, dimensions=None)
        first = engine.embed("m", anchor, output="numpy")
        assert first.shape == (DIMS,)

        def caller(tid: int) -> None:
            k = 0
            try:
                while not stop.is_set():
                    batch = [anchor, f"race {tid} {k} first", f"race {tid} {k} second", f"race {tid} {k} third"]
                    k += 1
                    try:
                        if k % 2:
                            rows = engine.embed_batch("m", batch, output="numpy")
                        else:
                            rows = np.asarray(engine.embed_batch("m", batch), dtype=np.float32)
                    except (EngineClosedError, ModelNotFoundError):
                        time.sleep(0.002)
                        continue
                    served.append((batch, rows))
            except BaseException as exc:  # a ValueError (shape mismatch) or anything else: the test fails
                failures.append(exc)

        def wait_for_service(before: int) -> None:
            deadline = time.monotonic() + 30
            while len(served) < before + 3 and time.monotonic() < deadline and not failures:
                time.sleep(0.005)

        callers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(3)]
        for t in callers:
            t.start()
        wait_for_service(0)
        for cycle in range(6):
            engine.unload_model("m")
            dims = SMALL if cycle % 2 == 0 else None
            engine.load_model(model_path=model_path, model_name="m", n_workers=1, dimensions=dims)
            wait_for_service(len(served))
        stop.set()
        for t in callers:
            t.join(60)
        assert not any(t.is_alive() for t in callers)
        assert not failures, f"a caller failed: {failures[0]!r}"

        # the name now serves full width (cycle 5); embed everything again: what was cached at full width
        # comes from the cache, the rest is computed
        seen = sorted({t for batch, _ in served for t in batch})
        full_again = engine.embed_batch("m", seen, output="numpy")
        engine.unload_model("m")
        engine.load_model(model_path=model_path, model_name="m", n_workers=1, dimensions=SMALL)
        small_again = engine.embed_batch("m", seen, output="numpy")
        assert engine.cache_stats().hits > 0
    finally:
        stop.set()
        engine.close()

    with EmbeddingEngine(cache_size=0) as ref:
        ref.load_model(model_path=model_path, model_name="full", n_workers=1)
        ref.load_model(model_path=model_path, model_name="small", n_workers=1, dimensions=SMALL)
        full_ref = dict(zip(seen, ref.embed_batch("full", seen, output="numpy"), strict=True))
        small_ref = dict(zip(seen, ref.embed_batch("small", seen, output="numpy"), strict=True))
    np.testing.assert_allclose(
        np.stack([small_ref[t] for t in seen]),
        _renormalized_prefix(np.stack([full_ref[t] for t in seen]), SMALL),
        atol=TOL,
    )

    widths = {rows.shape[1] for _, rows in served}
    assert widths == {DIMS, SMALL}, f"the race never served both configurations: {widths}"
    for batch, rows in served:
        assert rows.shape in ((len(batch), DIMS), (len(batch), SMALL))
        reference = full_ref if rows.shape[1] == DIMS else small_ref
        np.testing.assert_allclose(rows, np.stack([reference[t] for t in batch]), atol=TOL)
    np.testing.assert_allclose(full_again, np.stack([full_ref[t] for t in seen]), atol=TOL)
    np.testing.assert_allclose(small_again, np.stack([small_ref[t] for t in seen]), atol=TOL)
    np.testing.assert_allclose(first, full_ref[anchor], atol=TOL)


# --------------------------------------------------------------------------- 5. file replaced on disk
def test_file_replaced_on_disk_is_a_new_model(engine: EmbeddingEngine, model_path: Path, tmp_path: Path) -> None:
    """A GGUF atomically replaced under the same path loads the new weights while the old model is still loaded,
    with a new fingerprint and no cache entry of the old model answering for it."""
    path = tmp_path / "a.gguf"
    shutil.copyfile(model_path, path)
    other = quantize_model(model_path, tmp_path / "q8.gguf", "Q8_0")  # different weights
    text = "a model file replaced under the same name"
    later = "a text model 'a' first sees after its file was replaced"
    with EmbeddingEngine(cache_size=1000) as eng:
        eng.load_model(model_path=path, model_name="a", n_workers=1)
        old = eng.embed("a", text, output="numpy")

        staged = tmp_path / "staged.gguf"
        shutil.copyfile(other, staged)
        os.replace(staged, path)  # atomic: a new inode under the old name

        eng.load_model(model_path=path, model_name="b", n_workers=1)
        new = eng.embed("b", text, output="numpy")
        old_later = eng.embed("a", later, output="numpy")
        new_later = eng.embed("b", later, output="numpy")
        assert eng.model_info("b").fingerprint != eng.model_info("a").fingerprint
        assert eng.model_info("b").path == eng.model_info("a").path == str(path)
    with EmbeddingEngine(cache_size=0) as fresh:  # the new weights from a path nothing else ever loaded
        fresh.load_model(model_path=other, model_name="q", n_workers=1)
        # one text per call, as above: the same batch composition, so the last bits agree too
        expected = [fresh.embed("q", t, output="numpy") for t in (text, later)]
        assert fresh.model_info("q").fingerprint == identity.file_fingerprint(path)

    assert np.abs(new - old).max() > 1e-3, "model 'b' served the replaced file's old weights"
    np.testing.assert_allclose(new, expected[0], atol=1e-4)
    np.testing.assert_allclose(new_later, expected[1], atol=1e-4)
    # 'a' keeps serving the weights it loaded (the original file's, as the session engine serves them)
    np.testing.assert_allclose(old, engine.embed("minilm", text, output="numpy"), atol=1e-4)
    np.testing.assert_allclose(old_later, engine.embed("minilm", later, output="numpy"), atol=1e-4)


# --------------------------------------------------------------------------- 6. use_mmap honoured
_TRUNCATE_SCRIPT = """
    import os, sys
    from embellama import EmbeddingEngine

    path, use_mmap = sys.argv[1], sys.argv[2] == "1"
    engine = EmbeddingEngine(cache_size=0)
    engine.load_model(model_path=path, model_name="m", n_workers=1, use_mmap=use_mmap)
    before = engine.embed("m", "weights that must not come from the file any more")
    os.truncate(path, 0)
    after = engine.embed("m", "weights that must not come from the file any more")
    engine.close()
    assert before == after, "a different vector after truncation"
    print("EMBEDDED AFTER TRUNCATION", len(after))
"""


def test_use_mmap_false_reads_the_weights_into_memory(model_path: Path, tmp_path: Path) -> None:
    """With ``use_mmap=False`` a model keeps working after its file is truncated to 0 bytes (a mapping would
    SIGBUS), and the load mode passed to llama.cpp follows the flag."""
    assert _native._model_params(0, False).load_mode == llama_cpp.LLAMA_LOAD_MODE_NONE
    assert _native._model_params(0, True).load_mode == llama_cpp.LLAMA_LOAD_MODE_MMAP

    path = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, path)
    proc = _run_script(_TRUNCATE_SCRIPT, str(path), "0")
    assert proc.returncode == 0, f"use_mmap=False died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert f"EMBEDDED AFTER TRUNCATION {DIMS}" in proc.stdout
    assert path.stat().st_size == 0

    # the contrast that makes the check meaningful: a mapped model does die when its file is truncated
    shutil.copyfile(model_path, path)
    mapped = _run_script(_TRUNCATE_SCRIPT, str(path), "1")
    assert mapped.returncode == -signal.SIGBUS, (mapped.returncode, mapped.stderr[-2000:])


# --------------------------------------------------------------------------- 8. event-loop lag
class _GCPauses:
    """Time spent in CPython's cyclic GC while installed (the collector holds the GIL: the loop stalls with it)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            pause = time.perf_counter() - self._start
            self.total += pause
            self.longest = max(self.longest, pause)


async def _ticker(stop: asyncio.Event, pauses: _GCPauses, lags: list[tuple[float, float]]) -> None:
    """Tick every 5 ms; record each tick's delay, and its delay less the GC pauses that fell inside it."""
    period = 0.005
    while not stop.is_set():
        before, gc_before = time.perf_counter(), pauses.total
        await asyncio.sleep(period)
        lag = time.perf_counter() - before - period
        lags.append((lag, lag - (pauses.total - gc_before)))


async def _lag_during(coro: Any) -> tuple[Any, float, float, float]:
    """Run ``coro`` beside a ticker; return its result, the longest loop stall, the longest stall not counting
    garbage collection, and the longest GC pause."""
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()
    pauses = _GCPauses()
    gc.collect()  # every run starts from a collected heap, not from whatever the earlier runs left pending
    gc.callbacks.append(pauses)
    ticker = asyncio.ensure_future(_ticker(stop, pauses, lags))
    await asyncio.sleep(0)
    try:
        result = await asyncio.wait_for(coro, 240)
    finally:
        stop.set()
        await ticker
        gc.callbacks.remove(pauses)
    assert lags, "the ticker never ran"
    return result, max(lag for lag, _ in lags), max(own for _, own in lags), pauses.longest


# The target is 50 ms of stall caused by the engine; the bound is looser because the 2-core machine is shared.
MAX_LOOP_LAG = 0.15
# Stall including CPython's cyclic GC: a full collection landing inside a 20,000-row list answer traverses every
# row (7.7 million floats), 60-130 ms on this machine, whatever the engine does; this only bounds the sum.
MAX_LOOP_LAG_WITH_GC = 0.5


async def test_huge_async_batch_keeps_the_event_loop_responsive(model_path: Path) -> None:
    """20,000 short texts through ``aembed_batch``, uncached then cached, list and numpy: the loop keeps ticking."""
    texts = [f"t{i}" for i in range(20_000)]
    engine = EmbeddingEngine(cache_size=25_000, cache_bytes=64 << 20)  # room for all 20,000 vectors
    lags: dict[str, tuple[float, float, float]] = {}
    try:
        engine.load_model(model_path=model_path, model_name="m", n_workers=2)
        rows, *measured = await _lag_during(engine.aembed_batch("m", texts))
        lags["uncached list"] = (measured[0], measured[1], measured[2])
        assert len(rows) == len(texts)
        uncached = np.asarray(rows, dtype=np.float32)
        misses = engine.cache_stats().misses
        rows, *measured = await _lag_during(engine.aembed_batch("m", texts))
        lags["cached list"] = (measured[0], measured[1], measured[2])
        assert len(rows) == len(texts)
        cached = np.asarray(rows, dtype=np.float32)
        del rows
        as_numpy, *measured = await _lag_during(engine.aembed_batch("m", texts, output="numpy"))
        lags["cached numpy"] = (measured[0], measured[1], measured[2])
        stats = engine.cache_stats()
        probe = engine.embed_batch("m", [texts[0], texts[12_345], texts[-1]], output="numpy")
    finally:
        await engine.aclose()
    print(
        "\nmax loop lag over 20,000 texts: "
        + "; ".join(
            f"{kind} {lag * 1000:.1f} ms ({own * 1000:.1f} ms not counting GC, longest GC pause {pause * 1000:.1f} ms)"
            for kind, (lag, own, pause) in lags.items()
        )
    )
    assert as_numpy.shape == uncached.shape == cached.shape == (len(texts), DIMS)
    assert stats.hits >= 2 * len(texts) and stats.misses == misses  # the second and third runs were all hits
    np.testing.assert_array_equal(cached, as_numpy)
    np.testing.assert_allclose(uncached, as_numpy, atol=1e-6)
    np.testing.assert_allclose(as_numpy[[0, 12_345, -1]], probe, atol=TOL)
    for kind, (lag, own, _) in lags.items():
        assert own < MAX_LOOP_LAG, f"{kind}: the engine blocked the event loop for {own * 1000:.0f} ms (target 50 ms)"
        assert lag < MAX_LOOP_LAG_WITH_GC, f"{kind}: event loop blocked for {lag * 1000:.0f} ms"


# --------------------------------------------------------------------------- 9. fingerprints
_FINGERPRINT_SCRIPT = """
    import sys
    from embellama.files import identity

    def no_hash(path):
        raise AssertionError("re-hashed a file whose fingerprint is on disk")

    identity._hash = no_hash
    print(identity.file_fingerprint(sys.argv[1]))
"""


def test_fingerprint_covers_the_whole_file_and_is_computed_once(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal-size files differing only in the middle differ in fingerprint; an unchanged file is read once per
    process and not at all by a later process (the on-disk record)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBELLAMA_CACHE", str(cache))
    monkeypatch.setattr(identity, "_memo", {})
    real_hash = identity._hash
    hashed: list[str] = []

    def counting_hash(path: str | Path) -> str:
        hashed.append(str(path))
        return str(real_hash(path))

    monkeypatch.setattr(identity, "_hash", counting_hash)

    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    shutil.copyfile(model_path, a)
    shutil.copyfile(model_path, b)
    size = a.stat().st_size
    middle = size // 2
    assert middle > 2 * (1 << 20) and size - middle > 2 * (1 << 20)
    with open(b, "r+b") as f:
        f.seek(middle)
        chunk = f.read(16)
        f.seek(middle)
        f.write(bytes(x ^ 0xFF for x in chunk))
    stamp = a.stat().st_mtime_ns
    os.utime(b, ns=(stamp, stamp))
    assert b.stat().st_size == size

    fa, fb = identity.file_fingerprint(a), identity.file_fingerprint(b)
    assert fa != fb, "files differing in the middle got one fingerprint"
    assert fa == hashlib.sha256(a.read_bytes()).hexdigest()[:16]
    assert len(hashed) == 2

    assert identity.file_fingerprint(a) == fa
    assert identity.file_fingerprint(a) == fa
    assert hashed.count(str(a)) == 1, f"the unchanged file was hashed {hashed.count(str(a))} times"

    record = cache / "fingerprints" / f"{identity.file_identity(a).key()}.json"
    assert record.is_file()
    assert json.loads(record.read_text())["sha256"][:16] == fa

    env = {**os.environ, "EMBELLAMA_CACHE": str(cache)}
    proc = _run_script(_FINGERPRINT_SCRIPT, str(a), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == fa


# --------------------------------------------------------------------------- 10. progress
@pytest.fixture
def progress_engine(model_path: Path) -> Iterator[EmbeddingEngine]:
    """One worker, 8-text jobs: a 40-text request is 5 jobs, reported one at a time."""
    with EmbeddingEngine(cache_size=0, chunk_size=8) as eng:
        eng.load_model(model_path=model_path, model_name="p", n_workers=1)
        yield eng


PROGRESS_TEXTS = [f"progress text {i} about something else entirely" for i in range(40)]


def _record_jobs(engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """Capture every job the engine queues for model ``p`` to embed texts (not the jobs that only check them)."""
    pool = engine.registry.serving("p").pool
    jobs: list[Job] = []
    put = pool.put

    def recording_put(job: Job) -> None:
        if not getattr(job, "check_only", False):
            jobs.append(job)
        put(job)

    monkeypatch.setattr(pool, "put", recording_put)
    return jobs


def _embedded(jobs: list[Job]) -> int:
    """Texts of the jobs that have finished successfully."""
    return sum(len(j.texts) for j in jobs if j.future.done() and not j.future.cancelled() and not j.future.exception())


def _check_reports(reports: list[tuple[int, int, int]], n: int, sizes: set[int]) -> None:
    previous = 0
    for done, total, embedded in reports:
        assert total == n
        assert done <= embedded, f"reported {done} done while only {embedded} texts were embedded"
        assert done - previous in sizes, f"{done} is not a sum of finished chunk sizes ({sizes})"
        previous = done


def test_progress_runs_in_the_caller_thread(progress_engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync progress: in the calling thread, one report per finished chunk, ending at (n, n)."""
    jobs = _record_jobs(progress_engine, monkeypatch)
    me = threading.get_ident()
    threads: set[int] = set()
    reports: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        threads.add(threading.get_ident())
        reports.append((done, total, _embedded(jobs)))

    n = len(PROGRESS_TEXTS)
    rows = progress_engine.embed_batch("p", PROGRESS_TEXTS, output="numpy", progress=progress)
    assert rows.shape == (n, DIMS)
    assert threads == {me}
    assert reports[-1][:2] == (n, n)
    sizes = {len(c) for c in split(list(range(n)), 1, 8, 8)}
    _check_reports(reports, n, sizes)
    assert len(reports) == len(jobs) == 5


async def test_async_progress_runs_on_the_event_loop_thread(
    progress_engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Async progress: on the event loop's thread, ending at (n, n)."""
    jobs = _record_jobs(progress_engine, monkeypatch)
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    reports: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        threads.add(threading.get_ident())
        reports.append((done, total, _embedded(jobs)))

    n = len(PROGRESS_TEXTS)
    rows = await asyncio.wait_for(progress_engine.aembed_batch("p", PROGRESS_TEXTS, progress=progress), 120)
    assert len(rows) == n
    assert threads == {loop_thread}
    assert reports[-1][:2] == (n, n)
    _check_reports(reports, n, {8})


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_progress_after_an_interruption_never_overcounts(
    progress_engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch, interruption: type[BaseException]
) -> None:
    """A callback that raises (as Ctrl-C would) on its second report ends the request; what it was told never
    exceeds what was embedded, and the model keeps serving."""
    jobs = _record_jobs(progress_engine, monkeypatch)
    reports: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        reports.append((done, total, _embedded(jobs)))
        if len(reports) == 2:
            raise interruption("interrupted by the progress callback")

    n = len(PROGRESS_TEXTS)
    with pytest.raises(interruption, match="interrupted by the progress callback"):
        progress_engine.embed_batch("p", PROGRESS_TEXTS, progress=progress)
    assert len(reports) == 2
    _check_reports(reports, n, {8})
    assert all(done < n for done, _, _ in reports)
    deadline = time.monotonic() + 60
    while not all(j.future.done() for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(j.future.done() for j in jobs), "jobs of the interrupted request were left pending"

    after: list[tuple[int, int]] = []
    rows = progress_engine.embed_batch(
        "p", PROGRESS_TEXTS[:9], output="numpy", progress=lambda d, t: after.append((d, t))
    )
    assert rows.shape == (9, DIMS) and after[-1] == (9, 9)


async def test_async_progress_after_an_interruption_never_overcounts(
    progress_engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async twin of the interruption test."""
    jobs = _record_jobs(progress_engine, monkeypatch)
    reports: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        reports.append((done, total, _embedded(jobs)))
        if len(reports) == 2:
            raise RuntimeError("interrupted by the progress callback")

    with pytest.raises(RuntimeError, match="interrupted by the progress callback"):
        await asyncio.wait_for(progress_engine.aembed_batch("p", PROGRESS_TEXTS, progress=progress), 120)
    assert len(reports) == 2
    _check_reports(reports, len(PROGRESS_TEXTS), {8})
    rows = await asyncio.wait_for(progress_engine.aembed_batch("p", PROGRESS_TEXTS[:3], output="numpy"), 120)
    assert rows.shape == (3, DIMS)


def test_progress_callback_may_call_the_engine(progress_engine: EmbeddingEngine) -> None:
    """The callback runs outside every engine lock: it may embed with the same model without deadlocking."""
    inner: list[list[float]] = []

    def progress(done: int, total: int) -> None:
        inner.append(progress_engine.embed("p", f"nested call at {done}/{total}"))

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(progress_engine.embed_batch("p", PROGRESS_TEXTS, output="numpy", progress=progress))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "a progress callback calling the engine deadlocked"
    assert isinstance(outcome[0], np.ndarray) and outcome[0].shape == (len(PROGRESS_TEXTS), DIMS)
    assert len(inner) == 5 and all(len(v) == DIMS for v in inner)


# --------------------------------------------------------------------------- 12. str subclasses, process isolation
def test_str_subclass_under_process_isolation(model_path: Path) -> None:
    """Texts of a ``str`` subclass the child could not unpickle are sent as plain ``str``: alone, mixed into a
    batch, and inside a round coalesced from concurrent requests, none of which fails."""

    class MyStr(str):  # local: pickling it by reference fails
        pass

    plain = ["a plain text before", "x", "a plain text after"]
    mixed = [plain[0], MyStr("x"), plain[2]]
    with EmbeddingEngine(cache_size=0, chunk_size=2) as engine:
        engine.load_model(model_path=model_path, model_name="iso", n_workers=1, isolation="process")
        expected = engine.embed_batch("iso", plain, output="numpy")
        rows = engine.embed_batch("iso", mixed, output="numpy")
        assert rows.shape == (3, DIMS)
        np.testing.assert_allclose(rows, expected, atol=TOL)
        np.testing.assert_allclose(engine.embed("iso", MyStr("x"), output="numpy"), expected[1], atol=TOL)

        # concurrent requests coalesced into shared rounds, one of them carrying the subclass
        requests = [[f"concurrent {i} {j}" for j in range(5)] for i in range(6)]
        requests[3][2] = MyStr(requests[3][2])
        barrier = threading.Barrier(len(requests) + 1)

        def call(texts: list[str]) -> np.ndarray:
            barrier.wait(60)
            rows: np.ndarray = engine.embed_batch("iso", texts, output="numpy")
            return rows

        with ThreadPoolExecutor(len(requests) + 1) as pool:
            blocker = pool.submit(lambda: engine.embed_batch("iso", [f"keep busy {k}" for k in range(24)]))
            futures: list[Future[np.ndarray]] = [pool.submit(call, texts) for texts in requests]
            barrier.wait(60)
            results = [f.result(timeout=120) for f in futures]
            blocker.result(timeout=120)
        flat = [str.__str__(t) for texts in requests for t in texts]
        reference = engine.embed_batch("iso", flat, output="numpy")
    np.testing.assert_allclose(np.concatenate(results), reference, atol=TOL)


# --------------------------------------------------------------------------- messages
@pytest.fixture
def slow_process_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process-isolated load takes at least 0.5 s (a real load after a pause), so races land inside it."""
    real_load = ProcessBackend.load

    def slow_load(self: ProcessBackend) -> Any:
        time.sleep(0.5)
        return real_load(self)

    monkeypatch.setattr(ProcessBackend, "load", slow_load)


def _start_loading(engine: EmbeddingEngine, model_path: Path, name: str) -> tuple[threading.Thread, list[Any]]:
    """Start ``load_model`` in a thread; return once the engine answers "still loading" for ``name``."""
    outcome: list[Any] = []

    def load() -> None:
        try:
            outcome.append(engine.load_model(model_path=model_path, model_name=name, n_workers=1, isolation="process"))
        except BaseException as exc:
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            engine.embed(name, "are you there")
        except ModelNotFoundError as exc:
            if "still loading" in str(exc):
                return loader, outcome
            assert "no model named" in str(exc)
        else:
            pytest.fail("the model loaded before the test could observe it loading")
        time.sleep(0.001)
    pytest.fail("never saw the model loading")


def test_request_while_loading_says_still_loading(model_path: Path, slow_process_load: None) -> None:
    """A request to a name still loading is a ModelNotFoundError that says so, not "no model named"."""
    with EmbeddingEngine(cache_size=0) as engine:
        loader, outcome = _start_loading(engine, model_path, "late")
        with pytest.raises(ModelNotFoundError, match="still loading"):
            engine.embed_batch("late", ["a", "b"])
        loader.join(120)
        assert not loader.is_alive() and outcome[0].name == "late"
        assert len(engine.embed("late", "now it is here")) == DIMS


def test_close_while_loading(model_path: Path, slow_process_load: None) -> None:
    """close() during a load: the load fails with EngineClosedError "closed while ... loading"."""
    engine = EmbeddingEngine(cache_size=0)
    loader, outcome = _start_loading(engine, model_path, "doomed")
    engine.close()
    loader.join(120)
    assert not loader.is_alive()
    assert isinstance(outcome[0], EngineClosedError), outcome
    assert "closed while" in str(outcome[0])
    assert engine.models == {}


def test_unload_while_loading(model_path: Path, slow_process_load: None) -> None:
    """unload_model() during a load: the load fails with EngineClosedError "unloaded while it was loading"."""
    with EmbeddingEngine(cache_size=0) as engine:
        loader, outcome = _start_loading(engine, model_path, "fleeting")
        engine.unload_model("fleeting")
        loader.join(120)
        assert not loader.is_alive()
        assert isinstance(outcome[0], EngineClosedError), outcome
        assert "unloaded while" in str(outcome[0])
        assert "fleeting" not in engine.models
        with pytest.raises(ModelNotFoundError, match="no model named"):
            engine.embed("fleeting", "gone")
        # the name is free again
        engine.load_model(model_path=model_path, model_name="fleeting", n_workers=1)
        assert len(engine.embed("fleeting", "back")) == DIMS


_EMFILE_SCRIPT = """
    import errno, os, resource, sys
    from embellama import EmbeddingEngine, ModelLoadError

    path = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(128, hard), hard))
    engine = EmbeddingEngine(cache_size=0)
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    for isolation in ("thread", "process"):
        try:
            engine.load_model(model_path=path, model_name=isolation, n_workers=1, isolation=isolation)
        except ModelLoadError as exc:
            print(isolation.upper(), "ModelLoadError:", exc)
        except BaseException as exc:
            print(isolation.upper(), "OTHER:", type(exc).__name__, exc)
        else:
            print(isolation.upper(), "LOADED")
    for fd in held:
        os.close(fd)
    engine.load_model(model_path=path, model_name="after", n_workers=1)
    print("AFTER", len(engine.embed("after", "descriptors are back")))
    engine.close()
"""


def test_file_descriptor_exhaustion_is_a_clear_load_error(model_path: Path) -> None:
    """Out of file descriptors, a load fails with a ModelLoadError saying so (both isolations), then recovers."""
    proc = _run_script(_EMFILE_SCRIPT, str(model_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {line.split(" ", 1)[0]: line for line in proc.stdout.splitlines()}
    for isolation in ("THREAD", "PROCESS"):
        assert isolation in lines, proc.stdout
        assert "ModelLoadError:" in lines[isolation] and "too many open files" in lines[isolation], lines[isolation]
    assert lines["AFTER"] == f"AFTER {DIMS}"
