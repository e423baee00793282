"""Soak (``make stress``): 10,000 requests with random prompts and inputs to a real ``embellama serve``; its resident
memory must stay within 50 MB of its value after warm-up (issue 18, "Done means").

Requests mix embeddings with random ``prompt`` s (1-128 bytes), 1-6 random inputs (1-100 bytes), both encodings,
``dimensions``, malformed bodies and over-limit requests, eight at a time over keep-alive connections, loopback only.
"""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import MODEL, serve_process

WARM_UP = 1_000
REQUESTS = 10_000
CONCURRENCY = 8
BUDGET_BYTES = 50 << 20


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def _words(rng: random.Random, n_bytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < n_bytes:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 10)))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def _request(rng: random.Random) -> tuple[str, Any]:
    roll = rng.random()
    if roll < 0.03:
        return "content", b'{"model": "minilm", "input": ' + b"[" * rng.randint(2000, 50_000)  # malformed
    if roll < 0.05:
        return "json", {"model": MODEL, "input": "x", "prompt_name": [rng.random()]}  # wrong type
    body: dict[str, Any] = {
        "model": MODEL,
        "input": [_words(rng, rng.randint(1, 100)) for _ in range(rng.randint(1, 6))],
    }
    if rng.random() < 0.7:
        body["prompt"] = _words(rng, rng.randint(1, 128)) + ": "
    if rng.random() < 0.3:
        body["encoding_format"] = "base64"
    if rng.random() < 0.2:
        body["dimensions"] = rng.randint(1, 384)
    return "json", body


async def _drive(base: str, n: int, seed: int) -> dict[int, int]:
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        queue = [_request(rng) for _ in range(n)]

        async def worker() -> None:
            while queue:
                kind, payload = queue.pop()
                kwargs = {"json": payload} if kind == "json" else {"content": payload}
                response = await client.post("/v1/embeddings", **kwargs)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_server_rss_stays_flat_over_10000_random_requests(model_path: Path) -> None:
    with serve_process(["--model", str(model_path), "--model-name", MODEL, "--truncate"]) as (process, base, _log):
        warm = asyncio.run(_drive(base, WARM_UP, seed=1))
        before = _rss(process.pid)
        statuses = asyncio.run(_drive(base, REQUESTS, seed=2))
        after = _rss(process.pid)
    growth = after - before
    print(
        f"soak: RSS after {WARM_UP} warm-up requests {before / 2**20:.1f} MiB, after {REQUESTS} more "
        f"{after / 2**20:.1f} MiB (growth {growth / 2**20:+.1f} MiB); statuses {statuses} (warm-up {warm})"
    )
    assert sum(statuses.values()) == REQUESTS
    assert set(statuses) <= {200, 400, 413}, statuses
    assert statuses.get(200, 0) > REQUESTS * 0.7
    assert growth < BUDGET_BYTES, f"RSS grew {growth / 2**20:.1f} MiB"
