"""Response bodies in the API's shapes: embeddings (float or base64 vectors, ``dimensions`` cut and renormalized,
``usage``), rerank results, the model list and the health report."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from embellama.server.schemas import EmbeddingsRequest, RerankRequest
from embellama.types import ModelHealth, ModelInfo, Reranking

__all__ = ["embeddings_body", "health_body", "models_body", "rerank_body"]


def _vector(row: np.ndarray, encoding_format: str) -> Any:
    """One vector as JSON: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.tolist()


def embeddings_body(rows: np.ndarray, tokens: int, req: EmbeddingsRequest, normalize: bool) -> dict[str, Any]:
    """The ``POST /v1/embeddings`` answer: ``rows`` (one per input) cut to ``req.dimensions`` (and renormalized
    if the model normalizes), encoded as asked, with ``tokens`` as the usage."""
    if req.dimensions is not None and req.dimensions < rows.shape[1]:
        rows = rows[:, : req.dimensions]
        if normalize:
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    fmt = req.encoding_format
    data = [{"object": "embedding", "index": i, "embedding": _vector(row, fmt)} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}


def rerank_body(ranking: Reranking, req: RerankRequest) -> dict[str, Any]:
    """The ``POST /v1/rerank`` answer: the top documents by score (with their text if ``return_documents``)."""
    results = []
    for ranked in ranking.top:
        item: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
        if req.return_documents:
            item["document"] = {"text": ranked.document}
        results.append(item)
    usage = {"documents": len(req.documents)}
    return {"object": "list", "model": req.model, "results": results, "usage": usage}


def models_body(models: Mapping[str, ModelInfo]) -> dict[str, Any]:
    """The ``GET /v1/models`` answer: OpenAI's model list, with what embellama knows of each under ``embellama``."""
    data = [
        {"id": name, "object": "model", "owned_by": "embellama", "embellama": {"kind": info.kind,
         "dimensions": info.dimensions, "max_tokens": info.max_tokens, "family": info.family}}
        for name, info in sorted(models.items())
    ]  # fmt: skip
    return {"object": "list", "data": data}


def health_body(healths: Mapping[str, ModelHealth], draining: bool) -> tuple[dict[str, Any], int]:
    """The ``GET /health`` answer and its status: 200 ``ok``; 503 ``unavailable`` (naming the models without a live
    worker under ``down``) or ``draining``."""
    models = {
        name: {
            "workers": len(health.workers),
            "live": health.live,
            "crashes": health.crashes,
            "restarts": health.restarts,
            "last_error": health.last_error,
            "pids": [w.pid for w in health.workers],
        }
        for name, health in healths.items()
    }
    down = [name for name, health in healths.items() if health.live == 0]
    status = "draining" if draining else "unavailable" if down else "ok"
    body: dict[str, Any] = {"status": status, "models": models}
    if down:
        body["down"] = down
    return body, 200 if status == "ok" else 503
