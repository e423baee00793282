"""Telling the caller about texts cut to a model's limit: one warning per call, never silence.

A call that reaches the engine as several requests (LlamaIndex's sub-batches) gathers its reports with
:func:`one_report_per_call` and :func:`call_offset`, so it logs one warning in the caller's indices.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

from embellama.engine.planning import Plan
from embellama.errors import InvalidInputError
from embellama.types import Item

__all__ = ["call_offset", "one_report_per_call", "report_truncation"]

truncation_logger = logging.getLogger("embellama.engine.truncation")


class _CallReport:
    """Texts cut during one caller-level call that reaches the engine as several requests (LlamaIndex)."""

    def __init__(self) -> None:
        self.total = 0
        self.cut: dict[int, tuple[int, str]] = {}  # caller's index -> (tokens before the cut, preview)
        self.model = ""
        self.limit: object = "?"


_CALL: ContextVar[_CallReport | None] = ContextVar("embellama_call_report", default=None)
_CALL_OFFSET: ContextVar[int] = ContextVar("embellama_call_offset", default=0)


@contextlib.contextmanager
def one_report_per_call() -> Iterator[None]:
    """Gather the truncation warnings of every request made inside into one, logged when the block ends.

    For a framework call that reaches the engine as sub-batches; see :func:`call_offset` for their indices.
    """
    report = _CallReport()
    token = _CALL.set(report)
    try:
        yield
    finally:
        _CALL.reset(token)
        if report.cut:
            first = min(report.cut)
            _log_truncation(len(report.cut), report.total, report.model, report.limit, first, *report.cut[first])


@contextlib.contextmanager
def call_offset(start: int) -> Iterator[None]:
    """Inside :func:`one_report_per_call`: the requests made here start at index ``start`` of the caller's list."""
    token = _CALL_OFFSET.set(start)
    try:
        yield
    finally:
        _CALL_OFFSET.reset(token)


def report_truncation(plan: Plan, model_name: str, limit: int) -> None:
    """One warning per call that cut texts: how many, the limit, the first one, and how to be strict instead."""
    report = _CALL.get()
    if report is not None:
        report.total += plan.n
    if not plan.truncated:
        return
    previews = {i: (n, _text(plan.texts[i])[: InvalidInputError.PREVIEW_CHARS]) for i, n in plan.truncated.items()}
    if report is not None:
        offset = _CALL_OFFSET.get()
        report.cut.update({offset + i: v for i, v in previews.items()})
        report.model, report.limit = model_name, limit
        return
    first = min(previews)
    _log_truncation(len(previews), plan.n, model_name, limit, None if plan.single else first, *previews[first])


def _text(item: Item) -> str:
    return item if isinstance(item, str) else item[1]  # a reranker's pair: the document is what is cut


def _log_truncation(count: int, total: int, name: str, limit: object, first: int | None, n: int, text: str) -> None:
    truncation_logger.warning(
        "%d of %d texts exceeded model %r's limit of %s tokens and were truncated (first: index %s, %d tokens, "
        "%r); pass long_text_mode='raise' to refuse over-long texts instead",
        count,
        total,
        name,
        limit,
        "-" if first is None else first,
        n,
        text,
    )
