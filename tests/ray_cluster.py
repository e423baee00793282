"""Helpers for the Ray tests: environment for test clusters, and an EmbedBatch that reports where it ran."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyarrow as pa

from embellama_integrations.ray import EmbedBatch


def ray_environment() -> str:
    """Point Ray at a short private temp dir (its socket paths must stay short) with auth off; return the dir."""
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    return tmp


class WhereEmbedBatch(EmbedBatch):
    """EmbedBatch plus the node, process and thread layout of the actor that embedded each row."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        out = super().__call__(batch)
        info = self.client.info
        extra: dict[str, Any] = {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "layout": f"{info.n_workers}x{info.n_threads}",
        }
        for name, value in extra.items():
            out = out.append_column(name, pa.array([value] * out.num_rows))
        return out
