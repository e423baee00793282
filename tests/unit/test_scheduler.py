"""The scheduler and the round executor with a fake model: no llama.cpp, no weights, only the contract.

The fake model "embeds" a text as a vector derived from its characters, so results can be checked exactly; it
can be told to fail a decode or to block until released, which lets these tests pin down coalescing, stopping and
error isolation deterministically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest

from embellama import EmbeddingEngine, EmbeddingError, EngineClosedError, InvalidInputError, ModelConfig
from embellama.model.contract import run_round
from embellama.runtime.scheduler import Backend, WorkerPool
from embellama.types import Job, JobResult, ModelInfo, Payload
from tests.fixtures.fake_model import FakeBackend, FakeModel, expected, serve_fake_models


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def pool(model: FakeModel) -> Iterator[tuple[WorkerPool, list[FakeBackend]]]:
    backends: list[FakeBackend] = []

    def factory(stopping: threading.Event) -> Backend:
        backend = FakeBackend(model, stopping)
        backends.append(backend)
        return backend

    p = WorkerPool("fake", 1, factory, round_texts=4)
    p.start()
    yield p, backends
    p.stop(5)


# ---------------------------------------------------------------------------- run_round
def test_round_keeps_order_across_jobs_and_decodes(model: FakeModel) -> None:
    texts = ["a", "hello world", "bb", "x" * 16, "abc", "zz"]
    outcomes = run_round(model, [Payload(texts[:3], False, [10, 11, 12]), Payload(texts[3:], False, [0, 1, 2])])
    rows = [o.vectors for o in outcomes if isinstance(o, JobResult)]
    np.testing.assert_allclose(np.vstack(rows), np.stack([expected(t) for t in texts]), rtol=1e-6)
    assert len(model.decodes) == 2  # 6 texts, at most 4 per decode: shared between the two jobs


def test_round_errors_name_the_callers_index_and_spare_other_jobs(model: FakeModel) -> None:
    raised, collected, fine = run_round(
        model,
        [
            Payload(["ok", "bad", "ok2"], False, [40, 41, 42]),
            Payload(["bad", "x"], True, [7, 8]),
            Payload(["y"], False, [9]),
        ],
    )
    assert isinstance(raised, InvalidInputError) and raised.index == 41 and raised.n_tokens == 3
    assert raised.preview == "bad" and "'bad'" in str(raised)
    assert isinstance(collected, JobResult) and list(collected.errors) == [0] and collected.errors[0].index == 7
    assert np.isnan(collected.vectors[0]).all() and np.allclose(collected.vectors[1], expected("x"))
    assert isinstance(fine, JobResult) and np.allclose(fine.vectors[0], expected("y"))


def test_a_prompt_is_checked_once_per_round_and_joined_as_each_text_is_prepared(model: FakeModel) -> None:
    """Jobs carry the prompt once; the model joins it per text. A refused prompt fails its jobs whole, collecting
    or not, and spares jobs without it."""
    a, b, plain = run_round(
        model,
        [
            Payload(["x", "yy"], False, [0, 1], prompt="p:"),
            Payload(["z"], True, [2], prompt="p:"),
            Payload(["q"], False, [3]),
        ],
    )
    assert model.prompts_checked == 1
    assert isinstance(a, JobResult) and np.allclose(a.vectors, np.stack([expected("p:x"), expected("p:yy")]))
    assert isinstance(b, JobResult) and np.allclose(b.vectors[0], expected("p:z")) and a.token_counts == [3, 4]
    assert isinstance(plain, JobResult) and np.allclose(plain.vectors[0], expected("q"))
    long = "p" * 16
    refused, collecting, fine = run_round(
        model,
        [Payload(["x"], False, [0], prompt=long), Payload(["y"], True, [1], prompt=long), Payload(["z"], False, [2])],
    )
    assert isinstance(refused, InvalidInputError) and refused.subject == "prompt" and refused.index is None
    assert collecting is refused and str(refused).startswith("prompt: too long a prompt")
    assert isinstance(fine, JobResult) and model.prompts_checked == 2


def test_a_failing_decode_fails_only_its_jobs() -> None:
    model = FakeModel(max_texts=1, fail_on="boom")  # one text per decode
    a, b = run_round(model, [Payload(["boom"], False, [0]), Payload(["fine"], False, [0])])
    assert isinstance(a, EmbeddingError)
    assert isinstance(b, JobResult) and np.allclose(b.vectors[0], expected("fine"))


def test_stopping_between_decodes_fails_unfinished_jobs() -> None:
    model = FakeModel(max_texts=1)
    calls = iter([False, True, True])
    outcomes = run_round(model, [Payload(["a", "b", "c"], False, [0, 1, 2])], should_stop=lambda: next(calls))
    assert isinstance(outcomes[0], EngineClosedError) and model.decodes == [1]


def test_on_decode_reports_each_decode() -> None:
    model = FakeModel(max_texts=1)
    beats: list[int] = []
    run_round(model, [Payload(["a", "b", "c"], False, [0, 1, 2])], on_decode=lambda: beats.append(1))
    assert len(beats) == 3


# ---------------------------------------------------------------------------- WorkerPool
def test_waiting_jobs_are_coalesced_into_one_round(
    pool: tuple[WorkerPool, list[FakeBackend]], model: FakeModel
) -> None:
    p, backends = pool
    model.gate.clear()
    model.entered.clear()
    first = Job(["first"])
    p.put(first)
    assert model.entered.wait(10)  # the worker is inside a decode; the next jobs queue up
    waiting = [Job([f"t{i}"]) for i in range(6)]
    for job in waiting:
        p.put(job)
    model.gate.set()
    for job in [first, *waiting]:
        job.future.result(10)
    # after the first round: one decode's worth (4 texts) per round, then the rest
    assert [n for n, _ in backends[0].rounds] == [1, 4, 2]
    assert backends[0].rounds[0][1] is True  # a lone small request
    assert backends[0].rounds[1][1] is False  # others were still queued


def test_stop_fails_queued_jobs_and_refuses_new_ones(
    pool: tuple[WorkerPool, list[FakeBackend]], model: FakeModel
) -> None:
    p, backends = pool
    model.gate.clear()
    model.entered.clear()
    running = Job(["running"])
    p.put(running)
    assert model.entered.wait(10)
    queued = Job(["queued"])
    p.put(queued)
    stopper = threading.Thread(target=p.stop, args=(10,))
    stopper.start()
    time.sleep(0.05)
    model.gate.set()
    stopper.join(10)
    assert isinstance(running.future.result(10), JobResult)  # the running decode finished
    with pytest.raises(EngineClosedError):
        queued.future.result(10)
    late = Job(["late"])
    p.put(late)
    with pytest.raises(EngineClosedError, match="unloaded"):
        late.future.result(1)
    assert backends[0].closed


def test_cancelled_jobs_are_skipped(pool: tuple[WorkerPool, list[FakeBackend]], model: FakeModel) -> None:
    p, backends = pool
    model.gate.clear()
    model.entered.clear()
    p.put(Job(["busy"]))
    assert model.entered.wait(10)
    cancelled = Job(["never"])
    p.put(cancelled)
    assert cancelled.future.cancel()
    model.gate.set()
    after = Job(["after"])
    p.put(after)
    after.future.result(10)
    assert all("never" not in str(r) for r in backends[0].rounds)


def test_a_backend_that_fails_to_load_stops_the_pool() -> None:
    class Broken(FakeBackend):
        def load(self) -> ModelInfo:
            raise EmbeddingError("cannot load")

    p = WorkerPool("broken", 2, lambda stopping: Broken(FakeModel(), stopping), round_texts=4)
    with pytest.raises(EmbeddingError, match="cannot load"):
        p.start()
    assert p.stopping.is_set() and not any(w.is_alive() for w in p.workers)


# ---------------------------------------------------------------------------- the engine over a fake model
def test_engine_request_path_with_a_fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning, chunking, progress in the caller's thread, collect mode and the cache, without llama.cpp."""
    fake = FakeModel()
    serve_fake_models(monkeypatch, fake)
    texts = [f"text {i}" for i in range(50)] + ["bad", "x" * 20]
    with EmbeddingEngine(cache_size=100, chunk_size=8) as engine:
        engine.load_model(ModelConfig(model_path="fake.gguf", model_name="f", n_workers=2))
        seen: list[tuple[int, int, int]] = []
        result = engine.embed_batch(
            "f", texts, on_error="collect", progress=lambda d, t: seen.append((d, t, threading.get_ident()))
        )
        assert sorted(result.errors) == [50, 51] and result.errors[51].n_tokens == 20
        np.testing.assert_allclose(
            np.array(result.embeddings[:50]), np.stack([expected(t) for t in texts[:50]]), rtol=1e-6
        )
        assert {tid for _, _, tid in seen} == {threading.get_ident()}
        assert seen[-1][:2] == (52, 52) and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
        decodes = len(fake.decodes)
        again = engine.embed_batch("f", texts[:50], output="numpy")
        assert len(fake.decodes) == decodes  # answered from the cache
        np.testing.assert_allclose(again, np.array(result.embeddings[:50]))
        with pytest.raises(InvalidInputError) as info:
            engine.embed_batch("f", ["ok", "fine", "bad"])
        assert info.value.index == 2
        # strict mode checks a whole multi-job request before embedding any of it
        before, checked = len(fake.decodes), fake.prepared
        with pytest.raises(InvalidInputError) as late:
            engine.embed_batch("f", [f"fresh {i}" for i in range(40)] + ["x" * 20])
        assert late.value.index == 40 and late.value.n_tokens == 20
        assert len(fake.decodes) == before and 0 < fake.prepared - checked <= 41  # checked, never decoded
        with pytest.raises(InvalidInputError) as single:
            engine.embed("f", "bad")
        assert single.value.index is None
        pending: Future[JobResult] = engine.registry.submit("f", ["abc"])
        np.testing.assert_allclose(pending.result(10).vectors[0], expected("abc"))
