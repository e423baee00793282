"""What every head shares: the :class:`Head` protocol, what a forward's decodes leave for the read-out heads
(:class:`Decoded`), and :class:`Chain`, which runs one head after another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["ArrayOutput", "Chain", "DecodeOutput", "Decoded", "FloatArray", "Head"]

FloatArray = npt.NDArray[np.float32]

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


class Head(Protocol[In, Out]):
    """One step of the output stage: a pure function of what the step before produced."""

    def __call__(self, value: In, /) -> Out:
        """Turn ``value`` into this head's output."""
        ...


class DecodeOutput(Protocol):
    """What a finished decode holds: :class:`~embellama.model.native.NativeContext` after an encoder's decode, or
    :class:`ArrayOutput` with a decoder's token rows gathered over its decodes."""

    def sequence_embedding(self, seq: int, dim: int) -> FloatArray | None:
        """The pooled row of sequence ``seq`` (``dim`` values), or None when there is none."""
        ...

    def token_embeddings(self, n_tokens: int, dim: int) -> FloatArray | None:
        """The per-token rows of the decode (``[n_tokens, dim]``, sequence after sequence), or None."""
        ...


class Decoded(NamedTuple):
    """What the decodes of one forward left for the read-out heads."""

    output: DecodeOutput
    lengths: Sequence[int]
    """Tokens of each sequence, in order (a sequence's token rows follow the previous sequence's)."""


class ArrayOutput:
    """A :class:`DecodeOutput` held in numpy: a decoder's token rows, gathered as its sequences were fed in
    several decodes (llama.cpp keeps only the last decode's), and optionally pooled rows."""

    def __init__(self, tokens: FloatArray | None = None, pooled: FloatArray | None = None) -> None:
        self.tokens = tokens
        self.pooled = pooled

    def sequence_embedding(self, seq: int, dim: int) -> FloatArray | None:
        """Row ``seq`` of the pooled rows (its first ``dim`` values), or None without pooled rows."""
        if self.pooled is None or not 0 <= seq < len(self.pooled):
            return None
        return self.pooled[seq, :dim]

    def token_embeddings(self, n_tokens: int, dim: int) -> FloatArray | None:
        """The gathered token rows, or None without them.

        Raises:
            ValueError: they are not ``[n_tokens, dim]``.
        """
        if self.tokens is None:
            return None
        if self.tokens.shape != (n_tokens, dim):
            raise ValueError(f"token rows are {self.tokens.shape}, expected {(n_tokens, dim)}")
        return self.tokens


class Chain(Generic[A, B, C]):
    """``second(first(value))``: two heads as one (e.g. token rows, then pooling)."""

    def __init__(self, first: Head[A, B], second: Head[B, C]) -> None:
        self.first = first
        self.second = second

    def __call__(self, value: A, /) -> C:
        """Run ``first``, then ``second`` on its output."""
        return self.second(self.first(value))
