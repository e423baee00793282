"""Write a BERT sentence-transformers model (safetensors + WordPiece vocab) as an F16 or BF16 GGUF without torch.

The light install's route to the default model: it reads ``model.safetensors`` with ``safetensors.numpy`` and
writes the GGUF with llama.cpp's ``gguf`` package, laid out exactly as llama.cpp's converter lays out BERT
(tensor names, F16 or BF16 matrices and F32 vectors, the WordPiece vocabulary with ``▁`` word starts, special
tokens as control tokens, mean pooling from ``1_Pooling``), except that it records no EOS token (llama.cpp's BERT
tokenizer ends texts with the separator and only warned about it) and caps ``max_seq_length`` at the position
table. The matrices are rounded with ``gguf.quants.quantize``
from F32, as the converter rounds them for ``--outtype f16`` / ``--outtype bf16``; ``tests/model/test_default_model.py``
checks the file against the converter's, tensor for tensor, for both types. Usage:
``python -m embellama.files.bert_gguf MODEL_DIR OUT.gguf [f16|bf16]``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WEIGHT_TYPES", "WRITER_VERSION", "write_bert_gguf"]

logger = logging.getLogger(__name__)

WEIGHT_TYPES = ("f16", "bf16")
"""The weight types :func:`write_bert_gguf` writes (the matrices' type; vectors stay F32)."""

WRITER_VERSION = 2
"""Bumped whenever the written file changes; recorded under ``embellama.writer_version`` and in the default model's
file name, so a cache never keeps serving an older writer's file. 2: the tokenizer keys as llama.cpp's converter
writes them (no EOS token: llama.cpp warned about one outside its end-of-generation set), ``max_seq_length``
capped at the position table."""

_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_TOP = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}
_F32_MATRICES = {"position_embd.weight", "token_types.weight"}
_POOLING = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2, "pooling_mode_lasttoken": 3}


def _gguf_name(hf_name: str) -> str | None:
    name = hf_name.removeprefix("bert.")
    stem, _, kind = name.rpartition(".")
    if stem in _TOP:
        return f"{_TOP[stem]}.{kind}"
    if stem.startswith("encoder.layer."):
        index, _, rest = stem.removeprefix("encoder.layer.").partition(".")
        if rest in _LAYER:
            return f"blk.{index}.{_LAYER[rest]}.{kind}"
    return None  # e.g. the pooler, which llama.cpp does not use


def _vocabulary(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    special = {t["content"] for t in tokenizer.get("added_tokens", [])}
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens, types = [], []
    for piece in vocab:
        if piece in special:
            tokens.append(piece)
            types.append(3)  # CONTROL
        elif piece.startswith("##"):
            tokens.append(piece[2:])
            types.append(1)  # NORMAL
        else:
            tokens.append("\u2581" + piece)
            types.append(1)
    index = {piece: i for i, piece in enumerate(vocab)}
    return tokens, types, index


def _max_seq_length(st_config: dict[str, Any], config: dict[str, Any], model_dir: Path) -> int:
    """sentence-transformers' ``max_seq_length``, capped at the position table (``max_position_embeddings``): a
    longer input would index past the table, which makes llama.cpp abort."""
    recorded, positions = int(st_config["max_seq_length"]), int(config["max_position_embeddings"])
    if recorded > positions:
        logger.warning(
            "%s: max_seq_length=%d exceeds max_position_embeddings=%d; writing %d",
            model_dir.name,
            recorded,
            positions,
            positions,
        )
    return min(recorded, positions)


def write_bert_gguf(
    model_dir: str | Path, out: str | Path, *, name: str = "all-MiniLM-L6-v2", weight_type: str = "f16"
) -> None:
    """Write the BERT model in ``model_dir`` (sentence-transformers layout) to ``out`` as a GGUF.

    Args:
        model_dir: The sentence-transformers folder (``model.safetensors``, ``config.json``, vocabulary).
        out: The GGUF file to write.
        name: ``general.name`` of the model.
        weight_type: ``"f16"`` or ``"bf16"``: the type of the 2-D matrices (except the position and token-type
            embeddings, which stay F32 as in the converter's output) and the file type.

    Raises:
        ValueError: ``weight_type`` is not one of :data:`WEIGHT_TYPES`.
    """
    import gguf
    from safetensors.numpy import load_file

    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, not {weight_type!r}")
    qtype, file_type = {
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    }[weight_type]

    model_dir = Path(model_dir)
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    pooling_file = model_dir / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text()) if pooling_file.exists() else {"pooling_mode_mean_tokens": True}
    pooling_type = next((v for k, v in _POOLING.items() if pooling.get(k)), 1)
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokens, types, index = _vocabulary(model_dir)

    writer = gguf.GGUFWriter(str(out), arch="bert")
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(file_type)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(pooling_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(index["[CLS]"])
    # no eos_token_id, unlike the converter (whose SpecialVocab copies [SEP] there): llama.cpp's BERT tokenizer
    # closes every text with the separator token and never reads the EOS id, but warns at every load that an EOS
    # outside its end-of-generation set "may be incorrect"
    writer.add_unk_token_id(index["[UNK]"])
    writer.add_sep_token_id(index["[SEP]"])
    writer.add_pad_token_id(index["[PAD]"])
    writer.add_mask_token_id(index["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", bool(tokenizer_config.get("do_lower_case", True)))
    writer.add_uint32("embellama.max_seq_length", _max_seq_length(st_config, config, model_dir))
    writer.add_uint32("embellama.writer_version", WRITER_VERSION)

    for hf_name, array in load_file(str(model_dir / "model.safetensors")).items():
        target = _gguf_name(hf_name)
        if target is None:
            continue
        data = array.astype(np.float32)
        if data.ndim == 2 and target not in _F32_MATRICES:
            # what the converter does: round from F32 (BF16: round to nearest even, as ggml does), and pass the
            # type, since BF16 comes back as raw uint8 bytes whose shape gguf derives from the type
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":  # pragma: no cover - run by default_model in a child process
    write_bert_gguf(sys.argv[1], sys.argv[2], weight_type=sys.argv[3] if len(sys.argv) > 3 else "f16")
