"""The model contract and the round executor that drives it.

A *round* is what one worker serves at once: the jobs it took from its queue. :func:`run_round` packs the texts of
all of them into shared decodes through the :class:`EncoderModel` contract (after infinity's
``encode_pre`` / ``encode_core`` / ``encode_post``):

- ``check_prompt(prompt)`` refuses a job's prompt that leaves no room for text (once per prompt and round),
- ``prepare_input(text, prompt)`` tokenizes one text (after the prompt) and applies the length policy (raises
  :class:`~embellama.errors.InvalidInputError`), returning the tokens and the count before any cut,
- ``plan(lengths)`` groups prepared texts into decodes,
- ``forward(sequences)`` runs one decode and returns one raw row per sequence,
- ``postprocess(rows)`` turns raw rows into the vectors the caller gets.

The executor knows nothing about llama.cpp; the scheduler's unit tests drive it with a fake model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from embellama.errors import EngineClosedError, InvalidInputError
from embellama.types import JobResult, Payload

__all__ = ["EncoderModel", "Outcome", "Prepared", "run_round"]

Outcome = JobResult | BaseException
"""What one job of a round ends with."""


class Prepared(NamedTuple):
    """One text ready for a decode."""

    tokens: npt.NDArray[np.int32]
    n_tokens: int
    """Token count before the length policy: more than ``len(tokens)`` when the text was cut."""
    chunks: tuple[npt.NDArray[np.int32], ...] | None = None
    """With ``long_text_mode="mean"``: the pieces of an over-long text, whose rows are averaged (by length)."""


class EncoderModel(Protocol):
    """What the scheduler needs of a model. Implemented by :class:`embellama.model.embedding.EmbeddingModel`."""

    @property
    def output_width(self) -> int:
        """Columns of a row returned by :meth:`postprocess`."""

    def check_prompt(self, prompt: str) -> None:
        """Raise ``InvalidInputError`` (its ``subject`` ``"prompt"``) if ``prompt`` alone reaches the input limit.
        Called only for a non-empty prompt."""

    def prepare_input(self, text: str | tuple[str, str], prompt: str = "") -> Prepared:
        """Tokenize one text (``prompt`` + ``text``) and apply the length policy; raise ``InvalidInputError``
        (without an index) if it is unusable. Called without ``prompt`` when a job has none."""

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group prepared texts (by their token counts) into decodes; every index exactly once."""

    def forward(self, sequences: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.float32]:
        """Run one decode: one raw row per sequence, in order."""

    def postprocess(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Turn raw rows into output vectors (truncate dimensions, normalize)."""


def run_round(
    model: EncoderModel,
    payloads: Sequence[Payload],
    *,
    should_stop: Callable[[], bool] | None = None,
    on_decode: Callable[[], Any] | None = None,
) -> list[Outcome]:
    """Embed the texts of several jobs in shared decodes; return one outcome per job, in order.

    A job with an invalid text fails with that text's ``InvalidInputError`` (naming the caller's index and the
    text's first characters) unless it collects errors: then its valid texts are embedded and the errors returned
    beside them. A job whose prompt is refused fails whole, collecting or not (the prompt is every text's); a
    prompt is checked once per round, however many jobs carry it. A check-only job is prepared but never decoded.
    A decode that fails fails only the jobs that had texts in it; the others go on.

    Args:
        model: The model (see :class:`EncoderModel`).
        payloads: One :class:`~embellama.types.Payload` per job.
        should_stop: Checked before each decode; True fails the jobs not yet finished with
            ``EngineClosedError`` (so closing waits for one decode, not a whole round).
        on_decode: Called after each decode (a process backend reports progress with it).
    """
    outcomes: list[Outcome] = []
    sequences: list[npt.NDArray[np.int32]] = []
    owners: list[tuple[int, int]] = []  # per prepared sequence: (job, position in job)
    prompts: dict[str, InvalidInputError | None] = {}  # prompt -> why it was refused (None: fine), for this round
    for job_index, (texts, collect, indices, check_only, prompt) in enumerate(payloads):
        if prompt:
            if prompt not in prompts:
                try:
                    model.check_prompt(prompt)
                    prompts[prompt] = None
                except InvalidInputError as exc:
                    prompts[prompt] = exc
            refused = prompts[prompt]
            if refused is not None:
                outcomes.append(refused)
                continue
        errors: dict[int, InvalidInputError] = {}
        prepared: list[tuple[int, Prepared]] = []
        truncated: dict[int, int] = {}
        for position, text in enumerate(texts):
            try:
                ready = model.prepare_input(text, prompt) if prompt else model.prepare_input(text)
            except InvalidInputError as exc:
                errors[position] = exc.at_index(indices[position], text if isinstance(text, str) else text[1])
                if not collect:
                    break
                continue
            prepared.append((position, ready))
            if ready.chunks is None and ready.n_tokens > len(ready.tokens):
                truncated[position] = ready.n_tokens
        if errors and not collect:
            outcomes.append(next(iter(errors.values())))
            continue
        width = 0 if check_only else model.output_width
        counts = [0] * len(texts)
        for position, ready in prepared:
            counts[position] = ready.n_tokens
        outcomes.append(JobResult(np.full((len(texts), width), np.nan, dtype=np.float32), errors, truncated, counts))
        if check_only:
            continue
        for position, ready in prepared:
            for tokens in ready.chunks or (ready.tokens,):
                sequences.append(tokens)
                owners.append((job_index, position))
    if not sequences:
        return outcomes
    raw: npt.NDArray[np.float32] | None = None
    for group in model.plan([len(s) for s in sequences]):
        live = [i for i in group if isinstance(outcomes[owners[i][0]], JobResult)]
        if not live:
            continue
        if should_stop is not None and should_stop():
            stopped = EngineClosedError("the model was closed while serving this request")
            return [stopped if isinstance(o, JobResult) else o for o in outcomes]
        try:
            rows = model.forward([sequences[i] for i in live])
        except Exception as exc:
            for i in live:
                outcomes[owners[i][0]] = exc
            continue
        if raw is None:
            raw = np.empty((len(sequences), rows.shape[1]), dtype=np.float32)
        raw[live] = rows
        if on_decode is not None:
            on_decode()
    if raw is None:
        return outcomes
    # one row per text: the rows of a text's chunks (long_text_mode="mean") are averaged, weighted by length
    texts_done: dict[tuple[int, int], list[int]] = {}
    for i, (job, position) in enumerate(owners):
        if isinstance(outcomes[job], JobResult):
            texts_done.setdefault((job, position), []).append(i)
    if not texts_done:
        return outcomes
    combined = np.stack(
        [
            raw[parts[0]]
            if len(parts) == 1
            else np.average(raw[parts], axis=0, weights=[len(sequences[i]) for i in parts]).astype(np.float32)
            for parts in texts_done.values()
        ]
    )
    for row, (job, position) in zip(model.postprocess(combined), texts_done, strict=True):
        result = outcomes[job]
        assert isinstance(result, JobResult)
        result.vectors[position] = row
    return outcomes
