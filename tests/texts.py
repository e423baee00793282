"""Deterministic, varied test texts (short, long, non-ASCII, near the 256-token limit)."""

from __future__ import annotations

import random

BASE = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Photosynthesis converts light into chemical energy.",
    "I love programming in Python!",
    "Machine learning models need data.",
    "a",
    "OK",
    "   leading and trailing spaces   ",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "Numbers: 3.14159, 2.71828, 1,000,000 and 42.",
    "Punctuation!!! ??? ... ;;; --- ((()))",
    "email@example.com https://example.org/path?q=1",
    "Ünïcödé àccénts çà et là, naïve café résumé.",
    "日本語のテキストも埋め込みできます。",
    "中文文本嵌入测试。",
    "Русский текст для проверки.",
    "مرحبا بالعالم، هذا نص عربي",
    "שלום עולם",
    "Emoji 🙂🚀🔥 and symbols ∑∫√∞",
    "Combining marks: e\u0301 a\u0308 o\u0302",
    "Tabs\tand\nnewlines\r\nmixed",
    "def f(x):\n    return x * 2  # code",
    "SELECT * FROM users WHERE id = 1;",
    "Ελληνικά κείμενα",
    "한국어 텍스트",
    "hindi: हिन्दी पाठ",
    "mixed 123abc XYZ-789",
    "The mitochondria is the powerhouse of the cell.",
]

_WORDS = (  # noqa: SIM905 - a readable word pool
    "embedding vector model language text search retrieval document query token sentence semantic similarity "
    "local machine fast correct normalized pooling batch thread engine cache python llama neural network data "
    "the a of and to in is for on with as by at from"
).split()


def varied_texts() -> list[str]:
    """51 texts: the fixed ones above plus seeded random sentences, the longest exactly 256 tokens."""
    rng = random.Random(1234)
    texts = list(BASE)
    for n in (5, 10, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 210, 220, 225, 230, 15, 30, 50, 70, 90):
        texts.append(" ".join(rng.choice(_WORDS) for _ in range(n)))
    return texts
