"""Deterministic benchmark texts: short (~20 tokens) and long (~250 tokens), checked with the model's tokenizer."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Workload", "make_texts", "make_workload"]

_PROSE = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more about what up "
    "its into them than only other new some could time these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another know while last might "
    "great old year off come since against go came right used take three states himself few house use during "
    "without again place around however home small found thought went say part once general high upon school "
    "every does got united left number course war until always away something fact though water less public "
    "put think almost hand enough far took head yet government system better set told nothing night end why "
    "called didn eyes find going look asked later knew point next program city business give group toward "
    "young days let room president side social given present several order national possible rather second "
    "face per among form important often things looked early white case john become large big need four "
    "within felt along children saw best church ever least power development light thing seemed family "
    "interest want members mind country service embedding retrieval vector search document query model "
    "language semantic index database similarity cosine neural network token sentence paragraph library"
)
_WORDS = _PROSE.split()


@dataclass(frozen=True)
class Workload:
    """Texts of one workload and their token counts (special tokens included)."""

    name: str
    texts: list[str]
    tokens: list[int]

    @property
    def mean_tokens(self) -> float:
        """Average token count."""
        return sum(self.tokens) / max(1, len(self.tokens))


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def make_texts(n: int, n_words: int, seed: int) -> list[str]:
    """``n`` pseudo-English texts of ``n_words`` words each (±2), the same for the same ``seed``."""
    rng = random.Random(seed)
    return [_sentence(rng, max(1, n_words + rng.randint(-2, 2))) for _ in range(n)]


def make_workload(
    name: str, n: int, target_tokens: int, count_tokens: Callable[[str], int], seed: int, limit: int = 256
) -> Workload:
    """Texts whose token counts sit just under ``target_tokens`` (never over ``limit``, so nothing is cut).

    Each text starts with more words than needed and loses words from its end until it fits.
    """
    rng = random.Random(seed)
    texts: list[str] = []
    counts: list[int] = []
    cap = min(target_tokens, limit)
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(int(target_tokens * 1.2) + 4)]
        lo, hi = 1, len(words)  # largest prefix whose token count fits the cap (binary search)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(" ".join(words[:mid]) + ".") <= cap:
                lo = mid
            else:
                hi = mid - 1
        low_floor = max(1, lo - rng.randint(0, max(0, target_tokens // 25)))  # some length variety
        text = " ".join(words[:low_floor]).capitalize() + "."
        texts.append(text)
        counts.append(count_tokens(text))
    return Workload(name, texts, counts)
