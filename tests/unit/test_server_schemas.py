"""The server's request schemas without a model: every malformed body is the right :class:`ApiError` (status, type,
param, code), and the token check counts only what its size cannot prove small.

The parsers need of the engine only the served models by name (``kind``, ``dimensions``, ``max_tokens``,
``prompts``): :class:`FakeModel` is all they get. :func:`check_tokens` gets :class:`FakeCounter` (one token per
word, plus two special tokens per input). ``tests/server/`` runs the same cases through HTTP and a real model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from embellama.errors import InvalidInputError
from embellama.server.errors import ApiError
from embellama.server.limits import ServerLimits
from embellama.server.schemas import (
    SPECIAL_TOKENS,
    EmbeddingsRequest,
    check_tokens,
    parse_embeddings,
    parse_json,
    parse_rerank,
    read_json,
    token_bound,
)

EMB, RR = "emb", "rr"


@dataclass(frozen=True)
class FakeModel:
    """What the parsers read of a served model."""

    kind: str
    dimensions: int
    max_tokens: int
    prompts: dict[str, str] = field(default_factory=dict)


MODELS = {
    EMB: FakeModel("embedding", 384, 256, {"query": "query: "}),
    RR: FakeModel("reranker", 1, 512),
}
LIMITS = ServerLimits()


def api_error(parse: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse()
    assert info.value.message, "an API error must say what was wrong"
    return info.value


# ------------------------------------------------------------------------------------------------------ embeddings


EMBEDDING_CASES: list[tuple[str, dict[str, Any], int, str | None, str | None, str]] = [
    # (id, body, status, param, code, a word the message must contain)
    ("non-string-item", {"model": EMB, "input": ["a", "b", 3]}, 400, "input[2]", None, "int"),
    ("null-item", {"model": EMB, "input": ["a", None]}, 400, "input[1]", None, "string"),
    ("nested-item", {"model": EMB, "input": ["a", ["b"]]}, 400, "input[1]", None, "list"),
    ("empty-list", {"model": EMB, "input": []}, 400, "input", None, "non-empty"),
    ("no-input", {"model": EMB}, 400, "input", None, "input"),
    ("input-dict", {"model": EMB, "input": {"a": "b"}}, 400, "input", None, "string"),
    ("input-number", {"model": EMB, "input": 3.5}, 400, "input", None, "string"),
    ("token-ids", {"model": EMB, "input": [1, 2, 3]}, 400, "input", None, "check_embedding_ctx_length"),
    ("token-id-lists", {"model": EMB, "input": [[1, 2], [3]]}, 400, "input", None, "token arrays"),
    ("too-many", {"model": EMB, "input": ["x"] * 2049}, 413, "input", None, "2048"),
    ("unknown-model", {"model": "nope", "input": "x"}, 404, "model", "model_not_found", "nope"),
    ("reranker-model", {"model": RR, "input": "x"}, 400, "model", None, "reranker"),
    ("model-list", {"model": [EMB], "input": "x"}, 400, "model", None, "list"),
    ("model-dict", {"model": {"id": EMB}, "input": "x"}, 400, "model", None, "dict"),
    ("model-int", {"model": 7, "input": "x"}, 400, "model", None, "int"),
    ("format", {"model": EMB, "input": "x", "encoding_format": "hex"}, 400, "encoding_format", None, "base64"),
    ("format-list", {"model": EMB, "input": "x", "encoding_format": ["float"]}, 400, "encoding_format", None,
     "float"),
    ("format-dict", {"model": EMB, "input": "x", "encoding_format": {}}, 400, "encoding_format", None, "float"),
    ("dims-list", {"model": EMB, "input": "x", "dimensions": [128]}, 400, "dimensions", None, "1..384"),
    ("user-list", {"model": EMB, "input": "x", "user": ["me"]}, 400, "user", None, "list"),
    ("user-int", {"model": EMB, "input": "x", "user": 5}, 400, "user", None, "int"),
    ("prompt-list", {"model": EMB, "input": "x", "prompt": ["q: "]}, 400, "prompt", None, "list"),
    ("prompt-dict", {"model": EMB, "input": "x", "prompt": {"q": 1}}, 400, "prompt", None, "dict"),
    ("prompt-name-list", {"model": EMB, "input": "x", "prompt_name": ["query"]}, 400, "prompt_name", None, "list"),
    ("prompt-name-dict", {"model": EMB, "input": "x", "prompt_name": {"a": 1}}, 400, "prompt_name", None, "dict"),
    ("unknown-prompt-name", {"model": EMB, "input": "x", "prompt_name": "nope"}, 400, "prompt_name", None, "query"),
    ("surrogate-input", {"model": EMB, "input": ["ok", "bad \udfff"]}, 400, "input[1]", "invalid_input", "Unicode"),
    ("surrogate-prompt", {"model": EMB, "input": "x", "prompt": "\ud800 q: "}, 400, "prompt", "invalid_input",
     "Unicode"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "param", "code", "word"), [c[1:] for c in EMBEDDING_CASES],
                         ids=[c[0] for c in EMBEDDING_CASES])  # fmt: skip
def test_malformed_embeddings_bodies(
    body: dict[str, Any], status: int, param: str | None, code: str | None, word: str
) -> None:
    error = api_error(lambda: parse_embeddings(MODELS, body, LIMITS))
    assert (error.status, error.param, error.code) == (status, param, code), error.message
    kinds = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large"}
    assert error.kind == kinds[status]
    assert word in error.message, error.message


@pytest.mark.parametrize("dims", [0, 385, -1, True, 1.5, "128"])
def test_dimensions_out_of_range(dims: object) -> None:
    error = api_error(lambda: parse_embeddings(MODELS, {"model": EMB, "input": "x", "dimensions": dims}, LIMITS))
    assert (error.status, error.param) == (400, "dimensions")


def test_a_valid_embeddings_body() -> None:
    # no model named: the only embedding model; the prompt's 7 bytes count once per input
    req = parse_embeddings(MODELS, {"input": ["ab", "cde"], "dimensions": 384, "prompt_name": "query"}, LIMITS)
    assert req == EmbeddingsRequest(EMB, ["ab", "cde"], "float", 384, None, "query", "query: ", 5 + 2 * 7, 256)
    assert req.token_bound == 19 + 2 * SPECIAL_TOKENS
    plain = parse_embeddings(MODELS, {"model": EMB, "input": "é", "encoding_format": "base64", "user": "u"}, LIMITS)
    assert (plain.texts, plain.encoding_format, plain.prefix, plain.size) == (["é"], "base64", "", 2)
    explicit = parse_embeddings(MODELS, {"input": "x", "prompt": "p: ", "prompt_name": "query"}, LIMITS)
    assert explicit.prefix == "p: "  # an explicit prompt wins over a named one


def test_no_model_named_with_two_embedding_models_is_a_404() -> None:
    models = {**MODELS, "other": FakeModel("embedding", 8, 16)}
    error = api_error(lambda: parse_embeddings(models, {"input": "x"}, LIMITS))
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert "['emb', 'other', 'rr']" in error.message


def test_the_prompt_counts_once_per_input_against_the_body_limit() -> None:
    limits = ServerLimits(max_body_bytes=1000)
    ok = parse_embeddings(MODELS, {"input": ["w"] * 10, "prompt": "p" * 99}, limits)
    assert ok.size == 1000
    error = api_error(lambda: parse_embeddings(MODELS, {"input": ["w"] * 10, "prompt": "p" * 100}, limits))
    assert (error.status, error.param) == (413, "prompt") and "once per input" in error.message
    error = api_error(lambda: parse_embeddings(MODELS, {"input": ["w" * 501] * 2}, limits))
    assert (error.status, error.param) == (413, "input")


def test_max_inputs() -> None:
    limits = ServerLimits(max_inputs=4)
    assert len(parse_embeddings(MODELS, {"input": ["x"] * 4}, limits).texts) == 4
    error = api_error(lambda: parse_embeddings(MODELS, {"input": ["x"] * 5}, limits))
    assert (error.status, error.param) == (413, "input") and "5 inputs" in error.message
    error = api_error(lambda: parse_rerank(MODELS, {"query": "q", "documents": ["d"] * 5}, limits))
    assert (error.status, error.param) == (413, "documents")


# ------------------------------------------------------------------------------------------------------ rerank


RERANK_CASES: list[tuple[str, dict[str, Any], int, str | None, str]] = [
    ("no-query", {"model": RR, "documents": ["a"]}, 400, "query", "query"),
    ("query-list", {"model": RR, "query": ["q"], "documents": ["a"]}, 400, "query", "string"),
    ("query-dict", {"model": RR, "query": {"q": 1}, "documents": ["a"]}, 400, "query", "string"),
    ("doc-item", {"model": RR, "query": "q", "documents": ["a", {}]}, 400, "documents[1]", "string"),
    ("documents-dict", {"model": RR, "query": "q", "documents": {"a": 1}}, 400, "documents", "non-empty"),
    ("documents-empty", {"model": RR, "query": "q", "documents": []}, 400, "documents", "non-empty"),
    ("no-documents", {"model": RR, "query": "q"}, 400, "documents", "documents"),
    ("unknown-model", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "model", "nope"),
    ("embedder", {"model": EMB, "query": "q", "documents": ["a"]}, 400, "model", "embedding"),
    ("model-list", {"model": [RR], "query": "q", "documents": ["a"]}, 400, "model", "list"),
    ("top-n-zero", {"model": RR, "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n", "top_n"),
    ("top-n-list", {"model": RR, "query": "q", "documents": ["a"], "top_n": [1]}, 400, "top_n", "top_n"),
    ("top-n-str", {"model": RR, "query": "q", "documents": ["a"], "top_n": "2"}, 400, "top_n", "top_n"),
    ("top-n-bool", {"model": RR, "query": "q", "documents": ["a"], "top_n": True}, 400, "top_n", "top_n"),
    ("return-docs-str", {"model": RR, "query": "q", "documents": ["a"], "return_documents": "y"}, 400,
     "return_documents", "boolean"),
    ("surrogate-query", {"model": RR, "query": "\ud800", "documents": ["a"]}, 400, "query", "Unicode"),
    ("surrogate-doc", {"model": RR, "query": "q", "documents": ["\ud800"]}, 400, "documents[0]", "Unicode"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "param", "word"), [c[1:] for c in RERANK_CASES],
                         ids=[c[0] for c in RERANK_CASES])  # fmt: skip
def test_malformed_rerank_bodies(body: dict[str, Any], status: int, param: str | None, word: str) -> None:
    error = api_error(lambda: parse_rerank(MODELS, body, LIMITS))
    assert (error.status, error.param) == (status, param), error.message
    assert word in error.message, error.message


def test_a_valid_rerank_body_and_its_token_bound() -> None:
    req = parse_rerank(MODELS, {"query": "q", "documents": "d", "top_n": 3, "return_documents": True}, LIMITS)
    assert (req.model, req.query, req.documents, req.top_n, req.return_documents) == (RR, "q", ["d"], 3, True)
    assert parse_rerank(MODELS, {"query": "q", "documents": ["d"]}, LIMITS).return_documents is False
    limits = ServerLimits(max_request_tokens=200)
    # 20 documents of 1 byte with a 1-byte query: up to 20 x (2 + 8) = 200 tokens by their size: accepted
    parse_rerank(MODELS, {"query": "q", "documents": ["d"] * 20}, limits)
    error = api_error(lambda: parse_rerank(MODELS, {"query": "qq", "documents": ["d"] * 20}, limits))
    assert (error.status, error.code) == (413, "too_many_tokens")
    assert "up to 220 tokens (its UTF-8 size)" in error.message and "max_request_tokens" in error.message


def test_token_bound_is_the_smaller_of_size_and_the_model_limit() -> None:
    assert token_bound(100, 2, 256) == 100 + 2 * SPECIAL_TOKENS
    assert token_bound(10_000, 2, 256) == 512


# ------------------------------------------------------------------------------------------------------ JSON body


@pytest.mark.parametrize(
    ("body", "word"),
    [
        (b'{"model": "emb", "input": ', "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[" * 200_000, "invalid JSON"),
        (b'{"input": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}", "invalid JSON"),
        (b'["a", "b"]', "object"),
        (b"3", "object"),
    ],
    ids=["truncated", "not-utf8", "deep-array", "deep-object", "array", "number"],
)
def test_a_body_that_is_not_a_json_object_is_a_400(body: bytes, word: str) -> None:
    error = api_error(lambda: parse_json(body))
    assert (error.status, error.kind, error.param) == (400, "invalid_request_error", None)
    assert word in error.message


def chunks(parts: Iterable[bytes], read: list[int]) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for part in parts:
            read.append(len(part))
            yield part

    return stream()


def test_read_json_holds_the_body_limit_while_reading() -> None:
    limits = ServerLimits(max_body_bytes=100)
    body = json.dumps({"input": "x" * 50}).encode()
    read: list[int] = []
    assert asyncio.run(read_json(chunks([body[:10], body[10:]], read), None, limits)) == {"input": "x" * 50}
    endless = (b" " * 40 for _ in range(1_000_000))
    read.clear()
    with pytest.raises(ApiError) as info:
        asyncio.run(read_json(chunks(endless, read), None, limits))
    assert (info.value.status, info.value.kind) == (413, "request_too_large") and "100 bytes" in info.value.message
    assert len(read) == 3  # refused at the chunk that passed the limit, not at the end of the body
    read.clear()
    with pytest.raises(ApiError) as info:
        asyncio.run(read_json(chunks([body], read), "101", limits))
    assert info.value.status == 413 and read == []  # a declared size over the limit: refused unread


# ------------------------------------------------------------------------------------------------------ tokens


class FakeCounter:
    """One token per word plus two special tokens per input, the prompt's words counted with each input; with
    ``bad``, refuses that input index as the engine refuses an over-long one. Records its calls."""

    def __init__(self, models: Mapping[str, FakeModel] = MODELS, bad: int | None = None) -> None:
        self.models, self.bad = models, bad
        self.calls: list[tuple[list[str], str | None, str | None]] = []

    async def acount_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        texts = list(texts)
        self.calls.append((texts, prompt, prompt_name))
        if self.bad is not None:
            raise InvalidInputError("too long", index=self.bad, n_tokens=300, limit=256)
        prefix = prompt if prompt is not None else self.models[name].prompts.get(prompt_name or "", "")
        return sum(len(f"{prefix}{t}".split()) + 2 for t in texts)


def test_a_request_its_size_proves_small_is_not_counted() -> None:
    counter = FakeCounter()
    req = parse_embeddings(MODELS, {"input": ["a few words"] * 3, "prompt": "q: "}, LIMITS)
    asyncio.run(check_tokens(counter, req, LIMITS))
    assert counter.calls == []


def test_a_request_over_its_size_bound_is_counted_and_refused_if_over() -> None:
    limits = ServerLimits(max_request_tokens=200)
    words = " ".join(["word"] * 20)
    counter = FakeCounter()
    over = parse_embeddings(MODELS, {"input": [words] * 10}, limits)  # 220 tokens
    with pytest.raises(ApiError) as info:
        asyncio.run(check_tokens(counter, over, limits))
    assert (info.value.status, info.value.code) == (413, "too_many_tokens")
    assert "has 220 tokens" in info.value.message and "max_request_tokens" in info.value.message
    assert counter.calls == [([words] * 10, None, None)]
    under = parse_embeddings(MODELS, {"input": [words] * 2}, limits)  # over 200 by size (214), 44 tokens
    asyncio.run(check_tokens(counter, under, limits))
    assert len(counter.calls) == 2


def test_an_input_the_counter_refuses_is_a_400_naming_it() -> None:
    limits = ServerLimits(max_request_tokens=10)
    req = parse_embeddings(MODELS, {"input": ["ok", "long " * 100]}, limits)
    with pytest.raises(ApiError) as info:
        asyncio.run(check_tokens(FakeCounter(bad=1), req, limits))
    assert (info.value.status, info.value.param, info.value.code) == (400, "input[1]", "invalid_input")


@pytest.mark.parametrize("field", ["prompt", "prompt_name"])
def test_a_prompt_over_the_model_limit_is_a_400_naming_it(field: str) -> None:
    models = {EMB: FakeModel("embedding", 8, 16, {"long": "query " * 20})}
    body = {"input": "x", field: "query " * 20 if field == "prompt" else "long"}
    req = parse_embeddings(models, body, LIMITS)
    counter = FakeCounter(models)
    with pytest.raises(ApiError) as info:
        asyncio.run(check_tokens(counter, req, LIMITS))
    assert (info.value.status, info.value.param, info.value.code) == (400, field, "invalid_input")
    assert "22 tokens" in info.value.message and "16 tokens per input" in info.value.message
    assert [texts for texts, _, _ in counter.calls] == [[""]]  # the prompt alone was counted
    with pytest.raises(ApiError) as info:
        asyncio.run(check_tokens(FakeCounter(models, bad=0), req, LIMITS))
    assert (info.value.param, info.value.code) == (field, "invalid_input")
