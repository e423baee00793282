"""The server's response bodies without a model: base64 is little-endian float32, ``dimensions`` cuts (and
renormalizes only for a normalizing model), rerank results carry their text only when asked, and ``/health`` is
503 while a model has no live worker or the server drains."""

from __future__ import annotations

import base64

import numpy as np

from embellama.server.responses import embeddings_body, health_body, rerank_body
from embellama.server.schemas import EmbeddingsRequest, RerankRequest
from embellama.types import ModelHealth, RankedDocument, Reranking, WorkerHealth

ROWS = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)


def request(fmt: str = "float", dimensions: int | None = None) -> EmbeddingsRequest:
    return EmbeddingsRequest("m", ["a", "b"], fmt, dimensions, None, None, "", 2, 256)


def test_float_and_base64_vectors_and_usage() -> None:
    body = embeddings_body(ROWS, 7, request(), normalize=True)
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["embedding"] == [3.0, 4.0, 12.0]
    packed = embeddings_body(ROWS, 7, request("base64"), normalize=True)["data"]
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed]
    np.testing.assert_array_equal(np.stack(rows), ROWS)


def test_dimensions_cut_and_renormalize_only_a_normalizing_model() -> None:
    cut = embeddings_body(ROWS, 0, request(dimensions=2), normalize=True)["data"]
    np.testing.assert_allclose(cut[0]["embedding"], [0.6, 0.8], rtol=1e-6)
    raw = embeddings_body(ROWS, 0, request(dimensions=2), normalize=False)["data"]
    assert raw[0]["embedding"] == [3.0, 4.0]
    full = embeddings_body(ROWS, 0, request(dimensions=3), normalize=True)["data"]
    assert full[0]["embedding"] == [3.0, 4.0, 12.0]  # all the dimensions: left as the engine made them


def test_rerank_results_carry_the_text_only_when_asked() -> None:
    ranking = Reranking([0.1, 0.9], [RankedDocument(1, 0.9, "b"), RankedDocument(0, 0.1, "a")])
    plain = rerank_body(ranking, RerankRequest("r", "q", ["a", "b"], None, False))
    assert plain["results"] == [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]
    assert plain["usage"] == {"documents": 2} and plain["model"] == "r"
    texts = rerank_body(ranking, RerankRequest("r", "q", ["a", "b"], None, True))["results"]
    assert [r["document"] for r in texts] == [{"text": "b"}, {"text": "a"}]


def test_health_is_503_without_a_live_worker_or_while_draining() -> None:
    up = ModelHealth("a", (WorkerHealth(11, True),))
    dead = ModelHealth("b", (WorkerHealth(None, False, crashes=1, restarts=0, last_error="SIGKILL"),))
    body, status = health_body({"a": up}, draining=False)
    assert status == 200 and body == {"status": "ok", "models": {"a": {"workers": 1, "live": 1, "crashes": 0,
                                      "restarts": 0, "last_error": None, "pids": [11]}}}  # fmt: skip
    body, status = health_body({"a": up, "b": dead}, draining=False)
    assert (status, body["status"], body["down"]) == (503, "unavailable", ["b"])
    assert body["models"]["b"]["last_error"] == "SIGKILL" and body["models"]["b"]["pids"] == [None]
    body, status = health_body({"a": up}, draining=True)
    assert (status, body["status"]) == (503, "draining") and "down" not in body
