"""A BERT WordPiece tokenizer that reproduces Hugging Face's (the models' reference) exactly.

llama.cpp's own WPM tokenizer drops characters that BERT keeps: Hangul vowel jamo after NFD, and Indic vowel
signs (spacing marks, category Mc), so for Korean or Hindi text its token ids, and the vectors, differ from
sentence-transformers'. This module implements BERT's normalizer (clean text, pad CJK, strip accents = NFD
minus Mn, lowercase), pre-tokenizer (whitespace and punctuation) and greedy longest-match WordPiece over the
GGUF's own vocabulary. It is used for GGUFs whose ``tokenizer.ggml.model`` is ``bert``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["WordPieceTokenizer"]

_PHANTOM = "\u2581"  # llama.cpp's converter marks word-initial pieces with this and strips "##"
_MAX_CHARS_PER_WORD = 100
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


class WordPieceTokenizer:
    """BERT tokenization over a vocabulary given as llama.cpp stores it.

    Args:
        pieces: ``(token_id, text, is_control)`` for every vocabulary entry, texts as in the GGUF.
        lowercase: Lowercase and strip accents (uncased models). Defaults to True.
        cls_id, sep_id, unk_id: Ids of ``[CLS]``, ``[SEP]`` and ``[UNK]``.
    """

    def __init__(
        self, pieces: Iterable[tuple[int, str, bool]], *, lowercase: bool, cls_id: int, sep_id: int, unk_id: int
    ) -> None:
        self.lowercase = lowercase
        self.cls_id, self.sep_id, self.unk_id = cls_id, sep_id, unk_id
        self._initial: dict[str, int] = {}
        self._continuation: dict[str, int] = {}
        for token_id, text, is_control in pieces:
            if is_control:
                continue
            if text.startswith(_PHANTOM):
                self._initial.setdefault(text[1:], token_id)
            else:
                self._continuation.setdefault(text, token_id)

    def normalize(self, text: str) -> str:
        """BERT's normalizer: drop controls, unify whitespace, space out CJK, strip accents, lowercase."""
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out)
        if self.lowercase:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
            text = text.lower()
        return text

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        """Split on whitespace (dropped) and punctuation (kept as single-character words)."""
        words: list[str] = []
        current: list[str] = []
        for ch in text:
            if ch == " " or _is_whitespace(ch):
                if current:
                    words.append("".join(current))
                    current = []
            elif _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def _word_ids(self, word: str) -> list[int]:
        if len(word) > _MAX_CHARS_PER_WORD:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            table = self._initial if start == 0 else self._continuation
            end = len(word)
            while end > start:
                piece_id = table.get(word[start:end])
                if piece_id is not None:
                    ids.append(piece_id)
                    break
                end -= 1
            else:
                return [self.unk_id]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as ``[CLS] ... [SEP]``."""
        ids = [self.cls_id]
        for word in self.pre_tokenize(self.normalize(text)):
            ids.extend(self._word_ids(word))
        ids.append(self.sep_id)
        return ids
