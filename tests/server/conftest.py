"""Fixtures shared by the server tests; each module defines ``url``, the server its tests talk to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embellama import EmbeddingEngine
from tests.fixtures.rerankers import CrossEncoderFixture, cross_encoder
from tests.fixtures.servers import served_engine


@pytest.fixture(scope="module")
def ce() -> CrossEncoderFixture:
    """The test cross-encoder (served as ``rr``)."""
    return cross_encoder()


@pytest.fixture(scope="module")
def served(model_path: Path, ce: CrossEncoderFixture) -> Iterator[EmbeddingEngine]:
    """The engine behind the module's servers: the default model as ``minilm``, the cross-encoder as ``rr``."""
    with served_engine(model_path, ce.gguf_path) as eng:
        yield eng


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    """A client of the module's server (its ``url`` fixture)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
