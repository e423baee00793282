"""The OpenAI-compatible server against real clients over real sockets (loopback only).

A module-scoped uvicorn server runs in a background thread on 127.0.0.1 (an ephemeral port), serving an engine with
the default model (``minilm``) and the test cross-encoder (``rr``). References come from a separate engine (the
session's ``engine`` fixture, cache disabled), so a vector the server answers from its own cache still has to equal
a freshly computed one. Further apps (API key, tight limits) share the module's engine (``close_engine=False``).
One test runs ``python -m embellama.cli serve`` as a subprocess and stops it with SIGTERM mid-request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from pydantic import SecretStr

from embellama import EmbeddingEngine, InvalidInputError
from embellama.server.app import ServerLimits, create_app
from tests.fixtures.rerankers import SAMPLE_DOCUMENTS, SAMPLE_QUERY, CrossEncoderFixture
from tests.fixtures.servers import (
    HOST,
    MODEL,
    RERANKER,
    error_of,
    metric_values,
    running,
    serve_process,
    still_serving,
)

TEXTS = [
    "The cat sat on the mat.",
    "Quantum computers use qubits.",
    "Paris is the capital of France.",
    "A recipe for banana bread with walnuts.",
    "",
    "Ünïcödé text — with emoji 🙂 and 中文.",
]
LONG_TEXT = "embedding " * 300  # over the model's 256-token limit


# ----------------------------------------------------------------------------------------------------------- helpers


def cosines(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine similarity of two 2-D arrays."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    out: np.ndarray = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return out


def assert_same_vectors(got: Any, want: Any, floor: float = 0.9999) -> None:
    sims = cosines(got, want)
    assert sims.min() >= floor, f"cosines {np.round(sims, 6).tolist()}"


# ----------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def url(served: EmbeddingEngine) -> Iterator[str]:
    """The module's server; it closes its engine when it stops (``close_engine=True``)."""
    with running(create_app(served)) as base:
        yield base
    assert served.is_closed, "the server did not close its engine on shutdown"


@pytest.fixture
def ref(engine: EmbeddingEngine) -> EmbeddingEngine:
    """The reference: a separate engine with the same GGUF as ``minilm`` (conftest's, no cache)."""
    return engine


def assert_still_serving(http: httpx.Client, ref: EmbeddingEngine) -> None:
    """A normal request still succeeds and is right."""
    assert_same_vectors([still_serving(http)], [ref.embed(MODEL, "still serving?")])


# -------------------------------------------------------------------------------------------------- OpenAI client


def test_openai_client_sync_matches_the_engine(url: str, ref: EmbeddingEngine) -> None:
    want = ref.embed_batch(MODEL, TEXTS, output="numpy")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60) as client:
        implicit = client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks base64 and decodes it
        explicit = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
        single = client.embeddings.create(model=MODEL, input=TEXTS[2])
    for response in (implicit, explicit):
        assert response.model == MODEL and response.object == "list"
        assert [d.index for d in response.data] == list(range(len(TEXTS)))
        assert all(len(d.embedding) == 384 for d in response.data)
        assert_same_vectors([d.embedding for d in response.data], want)
        assert response.usage.prompt_tokens == response.usage.total_tokens == ref.count_tokens(MODEL, TEXTS)
    assert_same_vectors([single.data[0].embedding], want[2:3])
    np.testing.assert_allclose(implicit.data[0].embedding, explicit.data[0].embedding, atol=1e-6)


async def test_openai_client_async_matches_the_engine(url: str, ref: EmbeddingEngine) -> None:
    want = ref.embed_batch(MODEL, TEXTS, output="numpy")
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60) as client:
        together = await asyncio.gather(
            client.embeddings.create(model=MODEL, input=TEXTS),
            *(client.embeddings.create(model=MODEL, input=text, encoding_format="float") for text in TEXTS),
        )
    assert_same_vectors([d.embedding for d in together[0].data], want)
    assert_same_vectors([r.data[0].embedding for r in together[1:]], want)


def test_base64_is_little_endian_float32(url: str, http: httpx.Client, ref: EmbeddingEngine) -> None:
    body = {"model": MODEL, "input": TEXTS}
    floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]]
    assert all(row.shape == (384,) for row in rows)
    np.testing.assert_array_equal(np.stack(rows), np.asarray([d["embedding"] for d in floats["data"]], np.float32))
    assert_same_vectors(rows, ref.embed_batch(MODEL, TEXTS, output="numpy"))
    assert packed["usage"] == floats["usage"]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        raw = client.embeddings.create(model=MODEL, input=TEXTS[:1], encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)  # asked explicitly: the client hands the string over as is
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(raw.data[0].embedding), "<f4"), rows[0])


def test_dimensions_truncate_and_renormalize(url: str, http: httpx.Client, ref: EmbeddingEngine) -> None:
    full = ref.embed_batch(MODEL, TEXTS, output="numpy").astype(np.float64)
    want = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        response = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=128)
    got = np.asarray([d.embedding for d in response.data])
    assert got.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_same_vectors(got, want)
    same = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:2], "dimensions": 384}).json()
    assert_same_vectors([d["embedding"] for d in same["data"]], full[:2])
    for bad in (0, 385, -1, True, 1.5, "128"):
        r = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": bad})
        assert r.status_code == 400 and error_of(r)["param"] == "dimensions", (bad, r.text)


def test_prompt_and_prompt_name(url: str, ref: EmbeddingEngine) -> None:
    want = ref.embed_batch(MODEL, TEXTS[:3], output="numpy", prompt="query: ")
    plain = ref.embed_batch(MODEL, TEXTS[:3], output="numpy")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        response = client.embeddings.create(model=MODEL, input=TEXTS[:3], extra_body={"prompt": "query: "})
        got = [d.embedding for d in response.data]
        assert_same_vectors(got, want)
        assert cosines(got, plain).max() < 0.999  # the prompt was really applied
        assert response.usage.prompt_tokens == ref.count_tokens(MODEL, TEXTS[:3], prompt="query: ")
        with pytest.raises(openai.BadRequestError) as info:  # the default model has no named prompts
            client.embeddings.create(model=MODEL, input="x", extra_body={"prompt_name": "query"})
        assert info.value.status_code == 400 and "query" in str(info.value)
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MODEL, input="x", extra_body={"prompt": 5})
        assert len(client.embeddings.create(model=MODEL, input="ok").data) == 1


# ---------------------------------------------------------------------------------------------------------- LangChain


DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis lets plants turn sunlight into chemical energy.",
    "The stock market fell sharply after the interest rate rise.",
    "Penguins are flightless birds that live in the Southern Hemisphere.",
    "Python is a popular programming language for data science.",
]
QUERIES = {
    "Which landmark is in the French capital?": 0,
    "How do plants make food from light?": 1,
    "What birds cannot fly and live near Antarctica?": 3,
}


def test_langchain_openai_embeddings_retrieval(url: str, ref: EmbeddingEngine) -> None:
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=f"{url}/v1", api_key=SecretStr("x"), check_embedding_ctx_length=False, max_retries=0
    )
    store = InMemoryVectorStore.from_texts(DOCS, embeddings)
    for query, index in QUERIES.items():
        hits = store.similarity_search(query, k=1)
        assert hits[0].page_content == DOCS[index], query
    assert_same_vectors([embeddings.embed_query(DOCS[0])], [ref.embed(MODEL, DOCS[0])])


def test_langchain_token_arrays_get_a_clear_400(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``check_embedding_ctx_length=True`` (the default) sends tiktoken ids; tiktoken is given an offline byte encoding
    (its real encodings are downloaded, and this test must not leave loopback)."""
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    offline = tiktoken.Encoding(
        name="bytes-offline", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={}
    )
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: offline)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: offline)
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{url}/v1", api_key=SecretStr("x"), max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        embeddings.embed_documents(["hello world", "second"])
    assert info.value.status_code == 400
    assert "check_embedding_ctx_length" in str(info.value) and "token arrays" in str(info.value)


# -------------------------------------------------------------------------------------------------------- concurrency


async def test_300_concurrent_requests_are_all_answered_right(url: str, ref: EmbeddingEngine) -> None:
    texts = [f"concurrent request number {i}: {DOCS[i % len(DOCS)]}" for i in range(300)]
    want = ref.embed_batch(MODEL, texts, output="numpy")
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(text: str) -> httpx.Response:
            # the server shares this process (and the GIL) with 300 client connections on 2 cores: a connection
            # dropped under that load is retried once, as an HTTP client would; every answer must still be right
            try:
                return await client.post("/v1/embeddings", json={"model": MODEL, "input": text})
            except httpx.TransportError:
                return await client.post("/v1/embeddings", json={"model": MODEL, "input": text})

        responses = await asyncio.wait_for(asyncio.gather(*(one(t) for t in texts)), timeout=60)
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * len(texts)
    got = [r.json()["data"][0]["embedding"] for r in responses]
    assert_same_vectors(got, want)
    assert metric_values(metrics)["embellama_queued_texts"] == 0


# ------------------------------------------------------------------------------------------------------------- errors


ERROR_CASES: list[tuple[str, str, dict[str, Any], int, str | None, str]] = [
    # (id, path, request kwargs, status, param, a word the message must contain)
    ("bad-json", "/v1/embeddings", {"content": b'{"model": "minilm", "input": '}, 400, None, "JSON"),
    ("not-an-object", "/v1/embeddings", {"json": ["a", "b"]}, 400, None, "object"),
    ("non-string-item", "/v1/embeddings", {"json": {"model": MODEL, "input": ["a", "b", 3]}}, 400, "input[2]", "int"),
    ("null-item", "/v1/embeddings", {"json": {"model": MODEL, "input": ["a", None]}}, 400, "input[1]", "string"),
    ("empty-list", "/v1/embeddings", {"json": {"model": MODEL, "input": []}}, 400, "input", "non-empty"),
    ("no-input", "/v1/embeddings", {"json": {"model": MODEL}}, 400, "input", "input"),
    ("token-ids", "/v1/embeddings", {"json": {"model": MODEL, "input": [1, 2, 3]}}, 400, "input", "token"),
    ("too-long", "/v1/embeddings", {"json": {"model": MODEL, "input": ["ok", LONG_TEXT]}}, 400, "input[1]", "tokens"),
    ("unknown-model", "/v1/embeddings", {"json": {"model": "nope", "input": "x"}}, 404, "model", "nope"),
    ("reranker-model", "/v1/embeddings", {"json": {"model": RERANKER, "input": "x"}}, 400, "model", "reranker"),
    ("format", "/v1/embeddings", {"json": {"model": MODEL, "input": "x", "encoding_format": "hex"}}, 400,
     "encoding_format", "base64"),
    ("too-many", "/v1/embeddings", {"json": {"model": MODEL, "input": ["x"] * 2049}}, 413, "input", "2048"),
    ("rerank-no-query", "/v1/rerank", {"json": {"model": RERANKER, "documents": ["a"]}}, 400, "query", "query"),
    ("rerank-doc", "/v1/rerank", {"json": {"model": RERANKER, "query": "q", "documents": ["a", {}]}}, 400,
     "documents[1]", "string"),
    ("rerank-model", "/v1/rerank", {"json": {"model": "nope", "query": "q", "documents": ["a"]}}, 404, "model", "nope"),
    ("rerank-embedder", "/v1/rerank", {"json": {"model": MODEL, "query": "q", "documents": ["a"]}}, 400, "model",
     "embedding"),
    ("rerank-top-n", "/v1/rerank", {"json": {"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}}, 400,
     "top_n", "top_n"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "kwargs", "status", "param", "word"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])  # fmt: skip
def test_errors_are_openai_shaped_and_the_server_keeps_serving(
    http: httpx.Client, ref: EmbeddingEngine, path: str, kwargs: dict[str, Any], status: int, param: str | None,
    word: str,
) -> None:  # fmt: skip
    response = http.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param, error
    assert word in error["message"], error
    assert_still_serving(http, ref)


def test_over_long_text_error_names_its_token_count(http: httpx.Client, ref: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInputError) as info:
        ref.embed(MODEL, LONG_TEXT)
    count = int(re.search(r"(\d+) tokens", str(info.value)).group(1))  # type: ignore[union-attr]
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": LONG_TEXT})
    assert response.status_code == 400
    message = error_of(response)["message"]
    assert f"{count} tokens" in message and "256" in message, message
    assert error_of(response)["code"] == "invalid_input"


def test_unknown_routes_and_methods(http: httpx.Client, ref: EmbeddingEngine) -> None:
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/embeddings").status_code == 405
    assert http.post("/embeddings", json={"model": MODEL, "input": "alias"}).status_code == 200
    assert_still_serving(http, ref)


def test_api_key(served: EmbeddingEngine, ref: EmbeddingEngine) -> None:
    with running(create_app(served, api_key="secret", close_engine=False)) as base, httpx.Client(base_url=base) as c:
        body = {"model": MODEL, "input": "secured"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
            response = c.post("/v1/embeddings", json=body, headers=headers)
            assert response.status_code == 401, headers
            assert error_of(response)["code"] == "invalid_api_key"
        response = c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer secret"})
        assert response.status_code == 200
        assert_same_vectors([response.json()["data"][0]["embedding"]], [ref.embed(MODEL, "secured")])
        wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
        with wrong as client, pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model=MODEL, input="x")
        with openai.OpenAI(base_url=f"{base}/v1", api_key="secret", max_retries=0) as client:
            assert len(client.embeddings.create(model=MODEL, input=["a", "b"]).data) == 2
            assert {m.id for m in client.models.list()} == {MODEL, RERANKER}
    assert not served.is_closed  # close_engine=False


async def test_limits(served: EmbeddingEngine, ref: EmbeddingEngine) -> None:
    limits = ServerLimits(max_inputs=4, max_body_bytes=2000, max_queued_texts=8)
    app = create_app(served, limits=limits, close_engine=False)
    texts = [f"{DOCS[i % len(DOCS)]} {DOCS[(i + 1) % len(DOCS)]} request {i}" for i in range(4)]
    with running(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=64)) as c:

            async def ok() -> None:
                response = await c.post("/v1/embeddings", json={"model": MODEL, "input": texts})
                assert response.status_code == 200, response.text
                assert_same_vectors([d["embedding"] for d in response.json()["data"]], ref.embed_batch(MODEL, texts))

            response = await c.post("/v1/embeddings", json={"model": MODEL, "input": ["x"] * 5})
            assert response.status_code == 413 and error_of(response)["param"] == "input"
            await ok()
            response = await c.post("/v1/rerank", json={"model": RERANKER, "query": "q", "documents": ["d"] * 5})
            assert response.status_code == 413
            big = json.dumps({"model": MODEL, "input": ["y" * 2100]}).encode()
            response = await c.post("/v1/embeddings", content=big, headers={"content-type": "application/json"})
            assert response.status_code == 413 and "2000" in error_of(response)["message"]
            await ok()

            async def chunked() -> Any:  # no Content-Length: the server must count what it reads
                for _ in range(3):
                    yield big[: len(big) // 2]

            response = await c.post("/v1/embeddings", content=chunked())
            assert response.status_code == 413
            await ok()

            statuses: list[int] = []
            for _attempt in range(3):  # 16 requests of 4 texts against a queue of 8: most must wait their turn
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(c.post("/v1/embeddings", json={"model": MODEL, "input": [f"{t} {n}" for t in texts]})
                          for n in range(16))
                    ),
                    timeout=60,
                )  # fmt: skip
                statuses = [r.status_code for r in results]
                if 503 in statuses:
                    break
            assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses
            for r in results:
                if r.status_code == 503:
                    assert r.headers.get("retry-after") == "1"
                    assert error_of(r)["type"] == "server_overloaded"
                else:
                    assert len(r.json()["data"]) == 4
            metrics = metric_values((await c.get("/metrics")).text)
            assert metrics["embellama_queued_texts"] == 0
            assert metrics['embellama_requests_total{path="/v1/embeddings",status="503"}'] == statuses.count(503)
            await ok()
    assert not served.is_closed


def test_chunked_body_over_the_limit_is_refused_before_it_ends(served: EmbeddingEngine) -> None:
    """Without Content-Length the limit must hold while reading: the server answers 413 once the body passes
    ``max_body_bytes``, instead of buffering an unbounded body first (up to 1 MiB is sent here, never ended)."""
    app = create_app(served, limits=ServerLimits(max_body_bytes=2000), close_engine=False)
    with running(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (32768, b" " * 32768)
            answer = b""
            for _ in range(32):  # at most 32 x 32 KiB, ~2 s
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed: read its answer below
                    break
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    if answer := sock.recv(4096):
                        break
            if not answer:
                sock.settimeout(2)
                with contextlib.suppress(TimeoutError, OSError):
                    answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), f"no 413 after 1 MiB of a 2000-byte limit: {answer[:80]!r}"


# ---------------------------------------------------------------------------------------------------- rerank, models


def test_rerank_matches_transformers(http: httpx.Client, ce: CrossEncoderFixture) -> None:
    want = ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    body = {"model": RERANKER, "query": SAMPLE_QUERY, "documents": SAMPLE_DOCUMENTS}
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(SAMPLE_DOCUMENTS)))
    scores = np.zeros(len(SAMPLE_DOCUMENTS))
    for r in results:
        scores[r["index"]] = r["relevance_score"]
        assert "document" not in r
    assert np.max(np.abs(scores - want)) < 0.02
    assert [r["index"] for r in results] == list(np.argsort(-want))
    assert response.json()["usage"] == {"documents": len(SAMPLE_DOCUMENTS)}

    top = http.post("/v1/rerank", json={**body, "top_n": 2, "return_documents": True}).json()["results"]
    assert [r["index"] for r in top] == list(np.argsort(-want)[:2])
    assert all(r["document"] == {"text": SAMPLE_DOCUMENTS[r["index"]]} for r in top)
    assert len(http.post("/v1/rerank", json={**body, "top_n": 100}).json()["results"]) == len(SAMPLE_DOCUMENTS)
    default_model = http.post("/v1/rerank", json={"query": SAMPLE_QUERY, "documents": SAMPLE_DOCUMENTS[:2]})
    assert default_model.status_code == 200 and default_model.json()["model"] == RERANKER  # the only reranker


def test_models_and_health(http: httpx.Client) -> None:
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    by_id = {m["id"]: m for m in models["data"]}
    assert set(by_id) == {MODEL, RERANKER}
    assert by_id[MODEL]["embellama"]["kind"] == "embedding" and by_id[MODEL]["embellama"]["dimensions"] == 384
    assert by_id[MODEL]["embellama"]["max_tokens"] == 256
    assert by_id[RERANKER]["embellama"]["kind"] == "reranker"
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["models"]) == {MODEL, RERANKER}


def test_metrics_count_requests(http: httpx.Client) -> None:
    def scrape() -> dict[str, float]:
        response = http.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return metric_values(response.text)

    before = scrape()
    ok = 'embellama_requests_total{path="/v1/embeddings",status="200"}'
    bad = 'embellama_requests_total{path="/v1/embeddings",status="404"}'
    assert http.post("/v1/embeddings", json={"model": MODEL, "input": ["m1", "m2", "m3"]}).status_code == 200
    assert http.post("/v1/embeddings", json={"model": "nope", "input": "x"}).status_code == 404
    after = scrape()
    for name in (
        "embellama_requests_total",
        "embellama_errors_total",
        "embellama_request_seconds_bucket",
        "embellama_queued_texts",
        "embellama_request_texts_bucket",
    ):
        assert any(key.split("{")[0] == name for key in after), name
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    errors = 'embellama_errors_total{type="not_found_error"}'
    assert after[errors] == before.get(errors, 0) + 1
    every = 'embellama_request_seconds_bucket{le="+Inf"}'
    assert after[every] >= before[every] + 2
    assert after["embellama_request_seconds_count"] == after[every]
    assert after['embellama_request_texts_bucket{le="4"}'] == before['embellama_request_texts_bucket{le="4"}'] + 1
    assert after["embellama_request_texts_sum"] == before["embellama_request_texts_sum"] + 3
    assert after["embellama_texts_total"] == before["embellama_texts_total"] + 3
    assert after["embellama_tokens_total"] > before["embellama_tokens_total"]
    assert after["embellama_queued_texts"] == 0


# ------------------------------------------------------------------------------------------------ CLI, shutdown, bench


def test_cli_serve_finishes_in_flight_requests_on_sigterm_and_exits_0(
    model_path: Path, ce: CrossEncoderFixture, ref: EmbeddingEngine
) -> None:
    args = [
        "--model", str(model_path), "--model-name", MODEL,
        "--model", str(ce.gguf_path), "--model-name", RERANKER, "--truncate",
    ]  # fmt: skip
    with serve_process(args) as (process, base, log):
        with httpx.Client(base_url=base, timeout=10) as c:
            assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {MODEL, RERANKER}
            cut = c.post("/v1/embeddings", json={"model": MODEL, "input": LONG_TEXT})  # --truncate: cut, no 400
            assert cut.status_code == 200, cut.text
            assert cut.json()["usage"]["prompt_tokens"] > 256  # the tokens of the text as sent, before the cut

            texts = [f"{i} " + " ".join(DOCS) for i in range(96)]  # about a second of work on two cores
            answer: dict[str, httpx.Response | BaseException] = {}

            def send() -> None:
                try:
                    answer["r"] = httpx.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)
                except BaseException as exc:  # reported below
                    answer["r"] = exc

            sender = threading.Thread(target=send)
            sender.start()
            for _ in range(1000):  # until the request is queued (in flight), at most ~10 s
                if metric_values(c.get("/metrics").text)["embellama_queued_texts"] > 0 or "r" in answer:
                    break
                time.sleep(0.01)
            assert "r" not in answer, "the request finished before SIGTERM; make it longer"
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        response = answer.get("r")
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        got = [d["embedding"] for d in response.json()["data"]]
        assert len(got) == len(texts)
        assert_same_vectors(got[:4], ref.embed_batch(MODEL, texts[:4]))
        process.wait(60)
        output = log.read_text(errors="replace")
        assert "Application shutdown complete" in output, output
        assert process.returncode == 0, f"exit status {process.returncode}\n{output[-2000:]}"


async def test_benchmark_measure_smoke(url: str) -> None:
    from benchmarks.server import Cell, measure, render_table

    cell = await measure(url, MODEL, concurrency=2, seconds=1.0, max_requests=2000)
    assert cell.requests > 0 and cell.errors == 0 and len(cell.latencies) == cell.requests
    table = render_table(
        {("embellama serve", 2): cell, ("other", 2): Cell()},
        {"model": "m.gguf", "cores": "2", "budget": "1 s", "agreement": "1.0"},
    )
    assert "| embellama serve | 2 |" in table and table.count("\n|") == 4
