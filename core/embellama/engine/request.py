"""One request to one model — planned, checked, submitted, awaited, assembled and reported — for both twins.

A :class:`Request` is built from the registry (the serving model is looked up once, so a request is answered and
cached by the model that planned it even if the name is reloaded meanwhile). Its steps are one generator
(:meth:`Request._answer`): planning and assembling yield ``None`` between slices of texts, and waiting for jobs
yields a :class:`_Wait`. :func:`drive` runs that generator in the caller's thread (waiting on
``concurrent.futures.Future`` s); :func:`adrive` runs the same generator on an event loop (awaiting the same
futures, and letting the loop run between slices), so the sync and async APIs share every step and a model is
only ever called from its own thread.

Waits stop early when a job fails (its not-yet-started siblings are cancelled) and raise the failure of the
earliest failed job; progress callbacks run in the waiting thread and count only texts of jobs that succeeded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embellama.engine.cache import EmbeddingCache
from embellama.engine.planning import OnError, Output, Plan, Steps, assemble, checked_tokens, plan_request, split
from embellama.engine.registry import ModelRegistry, ServedModel
from embellama.engine.truncation import report_truncation
from embellama.errors import ConfigurationError, EngineClosedError, InvalidInputError
from embellama.texts import validate_prompt
from embellama.types import Item, Job, JobResult, ModelInfo, RankedDocument, Reranking

__all__ = ["SLICE_S", "Progress", "ProgressCallback", "Request", "adrive", "await_jobs", "drive", "wait_jobs"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with the texts finished so far, in the caller's thread (or event loop)."""

SLICE_S = 0.0005
"""How long :func:`adrive` runs a generator's slices before it lets the event loop run (0.5 ms)."""

_NO_CACHE = EmbeddingCache(0)

_MAX_SPECIAL_TOKENS = 8
"""More special tokens than any tokenizer adds around a text (BOS/CLS, EOS/SEP, ...)."""

FloatArray = npt.NDArray[np.float32]


# ---------------------------------------------------------------------- the request
class Request:
    """One request to one model: build it with :meth:`embeddings` or :meth:`pairs`, then :meth:`run` it (or
    ``await`` :meth:`arun`); :attr:`tokens` is its usage once it has run.

    Args:
        model: The serving model.
        cache: The cache to answer from and fill.
        chunk_size: Most texts per job.
        planning: The plan's generator (see :func:`~embellama.engine.planning.plan_request`).
        output: ``"list"`` or ``"numpy"``.
        progress: Optional ``progress(done, total)`` callback.
        finish: Turns the assembled answer into the caller's (the lone vector of ``embed``, a reranking).
        count_only: Tokenize only (no decode): the answer is the request's token count.
    """

    def __init__(
        self,
        model: ServedModel,
        cache: EmbeddingCache,
        chunk_size: int,
        planning: Steps,
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        finish: Callable[[Any], Any] | None = None,
        count_only: bool = False,
    ) -> None:
        self.model = model
        self.cache = cache
        self.chunk_size = chunk_size
        self.output = output
        self.progress = progress
        self.count_only = count_only
        self._planning = planning
        self._finish = finish
        self._plan: Plan | None = None

    @classmethod
    def embeddings(
        cls,
        registry: ModelRegistry,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        on_error: OnError = "raise",
        single: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        count_only: bool = False,
    ) -> Request:
        """A request to embed ``texts`` with the embedding model ``name`` (see ``EmbeddingEngine.embed_batch``).

        Args:
            single: ``texts`` is one text (``embed``): errors name no index and the answer is its vector.
            count_only: Count the tokens the model sees instead (no cache, no decode).

        Raises:
            ModelNotFoundError, EngineClosedError: no model ``name`` serves.
            ConfigurationError: ``name`` is a reranker, or the prompt is unknown or invalid.
        """
        model = registry.serving(name)
        info = model.info
        if info.kind == "reranker":
            raise ConfigurationError(
                f"model {info.name!r} is a reranker: score (query, document) pairs with rerank(), not embed()"
            )
        prompt = _prompt(info, prompt, prompt_name)
        cache = _NO_CACHE if count_only else registry.cache
        planning = _planning(registry, model, texts, cache, on_error=on_error, single=single, prompt=prompt)
        finish = _first if single else None
        return cls(
            model,
            registry.cache,
            registry.config.chunk_size,
            planning,
            output=output,
            progress=progress,
            finish=finish,
            count_only=count_only,
        )

    @classmethod
    def pairs(
        cls,
        registry: ModelRegistry,
        name: str,
        query: str,
        documents: Iterable[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> Request:
        """A request to score every document against ``query`` with the reranker ``name`` (see
        ``EmbeddingEngine.rerank``); its answer is a :class:`~embellama.types.Reranking`.

        Raises:
            ModelNotFoundError, EngineClosedError: no model ``name`` serves.
            InvalidInputError: ``documents`` is not a sequence of texts, or ``query`` is invalid.
            ConfigurationError: ``name`` is an embedding model (``top_n`` is checked once the scores are in).
        """
        model = registry.serving(name)
        documents = _documents(documents)
        info = model.info
        if info.kind != "reranker":
            raise ConfigurationError(
                f"model {info.name!r} is an embedding model; rerank() needs a reranker (a GGUF with a "
                "classification head, or pooling='rank')"
            )
        query = validate_prompt(query, limit=info.max_tokens, model_name=info.name, subject="query")
        planning = _planning(registry, model, documents, registry.cache, pair_with=query)
        finish = functools.partial(_reranking, documents=documents, top_n=top_n, normalize=normalize)
        return cls(model, registry.cache, registry.config.chunk_size, planning, output="numpy", finish=finish)

    # ------------------------------------------------------------------ the twins
    def run(self) -> Any:
        """Answer the request in this thread."""
        return drive(self._count() if self.count_only else self._answer())

    async def arun(self) -> Any:
        """Answer the request on the running event loop, never blocking it; cancelling the awaiting task drops the
        request's not-yet-started jobs."""
        return await adrive(self._count() if self.count_only else self._answer())

    def plan(self) -> Plan:
        """Plan the request in this thread (validation, cache lookups, chunks) without running it; :meth:`run`
        then uses this plan."""
        result: Plan = drive(self._planned())
        return result

    @property
    def tokens(self) -> int:
        """Tokens of the request's valid texts (its usage; cache answers count the tokens remembered with them)."""
        if self._plan is None:
            raise RuntimeError("the request has not been planned yet: run it (or plan it) first")
        return self._plan.tokens

    # ------------------------------------------------------------------ the steps
    def _answer(self) -> Flow:
        """Plan, check strictly, submit, wait, assemble and report (the generator both twins drive)."""
        plan = yield from self._planned()
        check = self._to_check(plan)
        if check:
            yield _Wait(self._submit(plan, check, check_only=True), None)
        futures = self._submit(plan)
        results = yield _Wait(futures, Progress(plan, futures, self.progress))
        answer = yield from assemble(plan, results, self.output, self.cache)
        report_truncation(plan, self.model.config.name, self.model.info.max_tokens)
        return answer if self._finish is None else self._finish(answer)

    def _count(self) -> Flow:
        """Plan and tokenize on the workers (check-only jobs): the request's token count."""
        plan = yield from self._planned()
        results = yield _Wait(self._submit(plan, check_only=True), None)
        return checked_tokens(plan, plan.chunks, results)

    def _planned(self) -> Generator[None, None, Plan]:
        if self._plan is None:
            self._plan = yield from self._planning
        return self._plan

    def _submit(
        self, plan: Plan, chunks: list[list[int]] | None = None, *, check_only: bool = False
    ) -> list[Future[JobResult]]:
        futures = []
        for chunk in plan.chunks if chunks is None else chunks:
            texts = [plan.texts[i] for i in chunk]
            job = Job(texts, plan.collect, plan.job_indices(chunk), check_only=check_only, prompt=plan.prompt)
            futures.append(job.future)
            self.model.pool.put(job)
        return futures

    def _to_check(self, plan: Plan) -> list[list[int]]:
        """Strict mode checks a whole request before embedding any of it (``long_text_mode="raise"``,
        ``on_error="raise"``, several jobs: one job is always checked whole before its first decode). Only texts
        that might exceed the limit are tokenized for it: no tokenizer yields more tokens than UTF-8 bytes, plus
        the special tokens."""
        config = self.model.config
        if config.long_text_mode != "raise" or plan.collect or len(plan.chunks) < 2:
            return []
        fits = self.model.info.max_tokens - _MAX_SPECIAL_TOKENS - len(plan.prompt.encode("utf-8"))
        suspects = [i for chunk in plan.chunks for i in chunk if _utf8_length(plan.texts[i]) > fits]
        return split(suspects, config.n_workers, self.chunk_size, config.max_texts_per_decode)


def _planning(
    registry: ModelRegistry,
    model: ServedModel,
    texts: Iterable[str],
    cache: EmbeddingCache,
    *,
    on_error: OnError = "raise",
    single: bool = False,
    prompt: str = "",
    pair_with: str | None = None,
) -> Steps:
    """The plan's generator for ``texts`` on ``model``: keyed by the model's identity and output options, cut into
    jobs of at most the engine's chunk size and at least one decode's worth."""
    info = model.info
    return plan_request(
        texts,
        identity=(info.fingerprint, model.config.output_options()),
        dims=info.dimensions,
        cache=cache,
        on_error=on_error,
        n_workers=model.config.n_workers,
        most=registry.config.chunk_size,
        least=model.config.max_texts_per_decode,
        single=single,
        prompt=prompt,
        pair_with=pair_with,
    )


def _first(rows: Any) -> Any:
    return rows[0]


def _prompt(info: ModelInfo, prompt: str | None, prompt_name: str | None) -> str:
    """The text put in front of every input: ``prompt``, else the model's prompt named ``prompt_name``; checked
    like an input and bounded in size (see :func:`~embellama.texts.validate_prompt`)."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ConfigurationError(f"prompt must be a string, got {prompt!r}")
    elif prompt_name is None:
        return ""
    elif prompt_name not in info.prompts:
        raise ConfigurationError(
            f"model {info.name!r} has no prompt named {prompt_name!r}; its prompts: {sorted(info.prompts)} "
            "(set ModelConfig(prompts=...) or pass prompt=...)"
        )
    else:
        prompt = info.prompts[prompt_name]
    return validate_prompt(prompt, limit=info.max_tokens, model_name=info.name) if prompt else ""


def _utf8_length(item: Item) -> int:
    return len(item.encode("utf-8")) if isinstance(item, str) else sum(len(t.encode("utf-8")) for t in item)


def _documents(documents: Iterable[str]) -> list[str]:
    if documents is None or isinstance(documents, (str, bytes)):
        raise InvalidInputError(f"expected a sequence of documents, got {type(documents).__name__}")
    return list(documents)


def _reranking(rows: FloatArray, *, documents: list[str], top_n: int | None, normalize: bool) -> Reranking:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ConfigurationError(f"top_n must be an integer >= 1 or None, got {top_n!r}")
    raw = rows[:, 0].astype(np.float64) if len(rows) else np.zeros(0)
    values = [float(x) for x in (1.0 / (1.0 + np.exp(-raw)) if normalize else raw)]
    order = sorted(range(len(values)), key=lambda i: -values[i])[:top_n]
    return Reranking(values, [RankedDocument(i, values[i], documents[i]) for i in order])


# ---------------------------------------------------------------------- driving the steps
@dataclass
class _Wait:
    """A step of a request: wait for these jobs (reporting progress to ``tracker``); the driver sends back their
    results."""

    futures: list[Future[JobResult]]
    tracker: Progress | None


Flow = Generator["_Wait | None", Any, Any]
"""A request's steps: ``None`` between slices of work, a :class:`_Wait` to wait for jobs (answered with their
results). A plain planning generator (:data:`~embellama.engine.planning.Steps`) is a flow without waits."""


def drive(flow: Flow) -> Any:
    """Run a request's steps (or a planning generator) to their end in this thread; return their value."""
    sent: Any = None
    while True:
        try:
            step = flow.send(sent)
        except StopIteration as stop:
            return stop.value
        sent = None if step is None else wait_jobs(step.futures, step.tracker)


async def adrive(flow: Flow) -> Any:
    """:func:`drive` on an event loop: awaits the waits, and lets the loop run whenever the slices have taken
    :data:`SLICE_S`.

    Yielding after every slice cost a loop iteration each (a query's plan and answer are a few slices of a few
    microseconds): a budget-free yield per slice made a lone query do more loop work than the query itself.
    """
    sent: Any = None
    start = time.perf_counter()
    while True:
        try:
            step = flow.send(sent)
        except StopIteration as stop:
            return stop.value
        if step is not None:
            sent = await await_jobs(step.futures, step.tracker)
            start = time.perf_counter()
            continue
        sent = None
        if time.perf_counter() - start >= SLICE_S:
            await asyncio.sleep(0)
            start = time.perf_counter()


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
