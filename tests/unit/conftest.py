"""Unit tests run without a model and without llama.cpp doing any work: the model fixtures fail here."""

from __future__ import annotations

import pytest


def _no_model() -> None:
    pytest.fail("tests/unit runs without a model: move a test that needs one to its layer's folder")


@pytest.fixture(scope="session")
def model_path() -> None:
    _no_model()


@pytest.fixture(scope="session")
def engine() -> None:
    _no_model()


@pytest.fixture(scope="session")
def quantized_paths() -> None:
    _no_model()


@pytest.fixture(scope="session")
def st_dir() -> None:
    _no_model()
