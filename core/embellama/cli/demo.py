"""The demo behind ``make demo``: embed a small corpus and answer queries by nearest neighbour."""

from __future__ import annotations

import time

import numpy as np

from embellama.config import ModelConfig
from embellama.engine.engine import EmbeddingEngine
from embellama.files.default_model import default_model_path

__all__ = ["CORPUS", "QUERIES", "run"]

CORPUS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Python is a popular programming language for data science.",
    "The Great Barrier Reef is the world's largest coral reef system.",
    "Mount Everest is Earth's highest mountain above sea level.",
    "A neural network is a model inspired by the human brain.",
    "The mitochondria is the powerhouse of the cell.",
    "Bread is made from flour, water, yeast and salt.",
    "Jupiter is the largest planet in the Solar System.",
    "The stock market fell sharply after the interest rate announcement.",
    "Espresso is brewed by forcing hot water through finely ground coffee.",
    "Football is the most watched sport in the world.",
]

QUERIES = [
    "Which tower stands in the French capital?",
    "How do plants make energy from sunlight?",
    "What is the biggest planet?",
    "How do I make coffee?",
    "deep learning models",
]


def run() -> list[tuple[str, str, float]]:
    """Print the best match for each query and return ``(query, match, cosine)`` triples."""
    path = default_model_path()
    with EmbeddingEngine() as engine:
        start = time.perf_counter()
        info = engine.load_model(ModelConfig(model_path=path, model_name="minilm"))
        loaded = time.perf_counter() - start
        print(
            f"model: {info.name} ({info.architecture}, {info.dimensions} dims, pooling {info.pooling}, "
            f"{info.size_bytes / 1e6:.0f} MB) loaded in {loaded * 1000:.0f} ms from {path}"
        )
        start = time.perf_counter()
        docs = engine.embed_batch("minilm", CORPUS, output="numpy")
        queries = engine.embed_batch("minilm", QUERIES, output="numpy")
        took = time.perf_counter() - start
        print(f"embedded {len(CORPUS) + len(QUERIES)} texts in {took * 1000:.0f} ms\n")
    scores = queries @ docs.T
    results = []
    for q, row in zip(QUERIES, scores, strict=False):
        best = int(np.argmax(row))
        results.append((q, CORPUS[best], float(row[best])))
        print(f"{q!r}\n  -> {CORPUS[best]!r}  (cosine {row[best]:.3f})")
    return results


if __name__ == "__main__":  # pragma: no cover
    run()
