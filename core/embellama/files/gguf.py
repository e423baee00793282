"""A small, dependency-free GGUF header reader that never trusts the file.

Used to reject files that are not GGUF before llama.cpp sees them, to read metadata (``info``, the recorded
``max_seq_length``) and the tensors' shapes without loading weights, and to fingerprint a model file for cache
keys. Every count, length, nesting depth, type, shape and offset in the header is checked against the file's
size and the format's limits before anything is read or allocated: a malformed or hostile header (a 2^61-item
array, deeply nested arrays, a string longer than the file, tensor data past its end) is a ``ModelLoadError``
naming the file and the field, never a ``MemoryError``, ``RecursionError`` or ``ValueError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from embellama.errors import ModelLoadError, ModelNotFoundError
from embellama.files.identity import file_fingerprint

__all__ = ["GGUFHeader", "MAX_SEQ_LENGTH_KEY", "check_model_file", "file_fingerprint", "read_header"]

GGUF_MAGIC = b"GGUF"
MAX_SEQ_LENGTH_KEY = "embellama.max_seq_length"
"""GGUF key holding sentence-transformers' ``max_seq_length``, which llama.cpp's converter drops."""

# GGUF value types -> struct format (scalars only); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_KEEP = 64  # arrays longer than this (token lists) are skipped, not kept
_MAX_DEPTH = 2
"""Array nesting accepted: an array of arrays at most (llama.cpp reads no deeper ones)."""
_MAX_STRING = 1 << 24
"""Longest string value or name accepted (16 MiB; chat templates are a few KiB)."""
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32
_INT64_MAX = (1 << 63) - 1
_U64 = struct.Struct("<Q")

# ggml tensor types -> (elements per block, bytes per block); checked against the gguf package by a test
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}
"""ggml tensor types this reader knows: type id -> (elements per block, bytes per block)."""


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says."""

    version: int
    n_tensors: int
    metadata: dict[str, Any]
    """Key/value metadata; long arrays (e.g. the vocabulary) are replaced by their length as ``"<array[N]>"``."""
    tensor_names: tuple[str, ...] = ()
    """Names of the tensors the file holds (e.g. ``cls.output.weight`` for a classification head)."""
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Each tensor's shape in ggml order (``ne0`` first: ``position_embd.weight`` is ``(n_embd, n_positions)``)."""

    @property
    def architecture(self) -> str:
        """``general.architecture``, e.g. ``"bert"``."""
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def has_classifier(self) -> bool:
        """Whether the file holds a classification head (a reranker / cross-encoder)."""
        return any(name.startswith("cls.output.") for name in self.tensor_names)

    @property
    def position_rows(self) -> int | None:
        """Rows of the learned absolute position table (``position_embd.weight``, BERT-like encoders), or ``None``
        for models without one (RoPE, ALiBi): the most positions a sequence can use, whatever the metadata says."""
        shape = self.tensor_shapes.get("position_embd.weight")
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def arch_value(self, key: str) -> Any:
        """Value of ``{architecture}.{key}``, or ``None``."""
        return self.metadata.get(f"{self.architecture}.{key}")


def check_model_file(path: Path) -> None:
    """Raise a typed error unless ``path`` is an existing, non-empty file starting with the GGUF magic."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}): {path}")


class _Malformed(Exception):
    """A header field that cannot be right (internal; becomes ``ModelLoadError``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse the GGUF header, metadata and tensor infos of ``path``, checking every field against the file.

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelLoadError: not a GGUF file, an unsupported version, or a malformed header; the message names the
            file and the field (``metadata key 'x'``, ``tensor info #3 'name'``) and what is wrong with it.
    """
    path = Path(path)
    check_model_file(path)
    try:
        with path.open("rb") as f:
            return _Reader(f, path.stat().st_size).header()
    except _Malformed as exc:
        raise ModelLoadError(f"malformed GGUF header in {path}: {exc}") from None
    except _Unsupported as exc:
        raise ModelLoadError(f"{exc}: {path}") from None


class _Unsupported(Exception):
    """A well-formed header this reader does not support (internal)."""


class _Reader:
    """Reads one header through its own buffer (skipping a 150k-token vocabulary costs no system call per token),
    checking every length against what is left of the file."""

    _CHUNK = 1 << 20

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # position in buf

    @property
    def offset(self) -> int:
        return self.base + self.pos

    @property
    def left(self) -> int:
        return self.size - self.offset

    def _fill(self, n: int, where: str) -> None:
        """Make ``buf[pos:pos + n]`` available (the caller checked that the file holds it)."""
        self.f.seek(self.base + len(self.buf))
        start = self.offset
        self.buf = self.buf[self.pos :] + self.f.read(max(n, self._CHUNK))
        self.base, self.pos = start, 0
        if len(self.buf) < n:  # pragma: no cover - the file shrank while we read it
            raise _Malformed(where, "the file ends inside the header")

    def read(self, n: int, where: str) -> bytes:
        if n > self.left:
            raise _Malformed(where, f"needs {n} bytes but the file ends {self.left} bytes later")
        if self.pos + n > len(self.buf):
            self._fill(n, where)
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int, where: str) -> None:
        if n > self.left:
            raise _Malformed(where, f"claims {n} bytes but the file ends {self.left} bytes later")
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:  # past the buffer: drop it and continue from the new offset
            self.base, self.buf, self.pos = self.offset + n, b"", 0

    def unpack(self, fmt: str, where: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            return struct.unpack(fmt, self.read(size, where))[0]
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def skip_strings(self, n: int, where: str) -> None:
        """Skip ``n`` strings (a vocabulary): the checks of :meth:`string_length`, in a tight loop."""
        u64 = _U64.unpack_from
        for _ in range(n):
            if self.pos + 8 > len(self.buf):
                length = self.string_length(where)
            else:
                (length,) = u64(self.buf, self.pos)
                self.pos += 8
                if length > _MAX_STRING or length > self.size - self.base - self.pos:
                    raise _Malformed(where, f"string of {length} bytes is longer than the rest of the file")
            if self.pos + length <= len(self.buf):
                self.pos += length
            else:
                self.skip(length, where)

    def string_length(self, where: str) -> int:
        n: int = self.unpack("<Q", where)
        if n > _MAX_STRING or n > self.left:
            raise _Malformed(where, f"string of {n} bytes is longer than the rest of the file or {_MAX_STRING}")
        return n

    def string(self, where: str) -> str:
        raw = self.read(self.string_length(where), where)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(where, f"string is not UTF-8 ({exc.reason} at byte {exc.start})") from None

    def header(self) -> GGUFHeader:
        self.read(4, "magic")
        version: int = self.unpack("<I", "version")
        if version not in (2, 3):
            raise _Unsupported(f"unsupported GGUF version {version}")
        n_tensors: int = self.unpack("<Q", "tensor count")
        n_kv: int = self.unpack("<Q", "metadata count")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = self.string(f"metadata entry #{i} (its key)")
            where = f"metadata key {key!r}"
            if key in metadata:
                raise _Malformed(where, "appears twice")
            vtype: int = self.unpack("<I", where)
            metadata[key] = self.value(vtype, where, 0)
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if (
            isinstance(alignment, bool)
            or not isinstance(alignment, int)
            or alignment < 1
            or alignment & (alignment - 1)
        ):
            raise _Malformed("metadata key 'general.alignment'", f"{alignment!r} is not a power of two")
        names: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        extents: list[tuple[str, int, int]] = []
        for i in range(n_tensors):
            name = self.string(f"tensor info #{i} (its name)")
            where = f"tensor info #{i} {name!r}"
            if name in shapes:
                raise _Malformed(where, "name appears twice")
            n_dims: int = self.unpack("<I", where)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _Malformed(where, f"{n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
            dims = tuple(int(self.unpack("<Q", where)) for _ in range(n_dims))
            ggml_type: int = self.unpack("<I", where)
            offset: int = self.unpack("<Q", where)
            extents.append((where, offset, _tensor_bytes(dims, ggml_type, where)))
            if offset % alignment:
                raise _Malformed(where, f"data offset {offset} is not a multiple of the alignment {alignment}")
            names.append(name)
            shapes[name] = dims
        data_start = -(-self.offset // alignment) * alignment
        data_size = self.size - data_start
        for where, offset, nbytes in extents:
            if offset + nbytes > data_size:
                raise _Malformed(
                    where, f"data ({nbytes} bytes at offset {offset}) extends past the end of the file ({data_size})"
                )
        return GGUFHeader(
            version=version, n_tensors=n_tensors, metadata=metadata, tensor_names=tuple(names), tensor_shapes=shapes
        )

    def value(self, vtype: int, where: str, depth: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], where)
        if vtype == _STRING:
            return self.string(where)
        if vtype != _ARRAY:
            raise _Malformed(where, f"unknown value type {vtype}")
        if depth >= _MAX_DEPTH:
            raise _Malformed(where, f"arrays nested deeper than {_MAX_DEPTH} levels")
        item_type: int = self.unpack("<I", where)
        n: int = self.unpack("<Q", where)
        if item_type in _SCALARS:
            item_size = struct.calcsize(_SCALARS[item_type])
        elif item_type == _STRING:
            item_size = 8  # each item has at least its length
        elif item_type == _ARRAY:
            item_size = 12  # each nested array has at least its item type and count
        else:
            raise _Malformed(where, f"array of unknown value type {item_type}")
        if n * item_size > self.left:
            raise _Malformed(where, f"array of {n} items cannot fit in the {self.left} bytes left in the file")
        if n > _MAX_ARRAY_KEEP:  # skipped: token lists, scores, merges
            if item_type in _SCALARS:
                self.skip(n * item_size, where)
            elif item_type == _STRING:
                self.skip_strings(n, where)
            else:
                for _ in range(n):
                    self.value(_ARRAY, where, depth + 1)
            return f"<array[{n}]>"
        return [self.value(item_type, where, depth + 1) for _ in range(n)]


def _tensor_bytes(dims: tuple[int, ...], ggml_type: int, where: str) -> int:
    """Bytes of a tensor's data, after checking its type and shape."""
    if ggml_type not in GGML_TYPE_SIZES:
        raise _Malformed(where, f"unknown tensor type {ggml_type}")
    block, block_bytes = GGML_TYPE_SIZES[ggml_type]
    if dims[0] % block:
        raise _Malformed(where, f"first dimension {dims[0]} is not a multiple of its type's block size {block}")
    elements = 1
    for d in dims:
        elements *= d
        if elements > _INT64_MAX:
            raise _Malformed(where, f"shape {list(dims)} overflows 64 bits")
    return elements // block * block_bytes
