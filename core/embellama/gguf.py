"""A small, dependency-free GGUF header reader.

Used to reject files that are not GGUF before llama.cpp sees them, to read metadata (``info``, the recorded
``max_seq_length``) without loading weights, and to fingerprint a model file for cache keys.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelLoadError, ModelNotFoundError
from .identity import file_fingerprint

__all__ = ["GGUFHeader", "MAX_SEQ_LENGTH_KEY", "check_model_file", "file_fingerprint", "read_header"]

GGUF_MAGIC = b"GGUF"
MAX_SEQ_LENGTH_KEY = "embellama.max_seq_length"
"""GGUF key holding sentence-transformers' ``max_seq_length``, which llama.cpp's converter drops."""

# GGUF value types -> struct format (scalars only); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_KEEP = 64  # arrays longer than this (token lists) are skipped, not kept


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says."""

    version: int
    n_tensors: int
    metadata: dict[str, Any]
    """Key/value metadata; long arrays (e.g. the vocabulary) are replaced by their length as ``"<array[N]>"``."""
    tensor_names: tuple[str, ...] = ()
    """Names of the tensors the file holds (e.g. ``cls.output.weight`` for a classification head)."""

    @property
    def architecture(self) -> str:
        """``general.architecture``, e.g. ``"bert"``."""
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def has_classifier(self) -> bool:
        """Whether the file holds a classification head (a reranker / cross-encoder)."""
        return any(name.startswith("cls.output.") for name in self.tensor_names)

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


def read_header(path: str | Path) -> GGUFHeader:
    """Parse the GGUF header and metadata of ``path``; raises ``ModelLoadError`` if it is malformed."""
    path = Path(path)
    check_model_file(path)
    try:
        with path.open("rb") as f:
            f.read(4)
            version, n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
            if version not in (2, 3):
                raise ModelLoadError(f"unsupported GGUF version {version}: {path}")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _read_string(f)
                (vtype,) = struct.unpack("<I", _read(f, 4))
                metadata[key] = _read_value(f, vtype)
            names = []
            for _ in range(n_tensors):  # tensor infos: name, n_dims, dims, type, offset
                names.append(_read_string(f))
                (n_dims,) = struct.unpack("<I", _read(f, 4))
                f.seek(8 * n_dims + 4 + 8, 1)
    except (struct.error, UnicodeDecodeError, EOFError) as exc:
        raise ModelLoadError(f"malformed GGUF header in {path}: {exc}") from None
    return GGUFHeader(version=version, n_tensors=n_tensors, metadata=metadata, tensor_names=tuple(names))


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("file ends inside the header")
    return data


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > 1 << 24:
        raise EOFError(f"implausible string length {n}")
    return _read(f, n).decode("utf-8")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_string(f)
    if vtype == _ARRAY:
        (item_type,) = struct.unpack("<I", _read(f, 4))
        (n,) = struct.unpack("<Q", _read(f, 8))
        if n > _MAX_ARRAY_KEEP and item_type in _SCALARS:
            f.seek(n * struct.calcsize(_SCALARS[item_type]), 1)
            return f"<array[{n}]>"
        items = [_read_value(f, item_type) for _ in range(n)]
        return items if n <= _MAX_ARRAY_KEEP else f"<array[{n}]>"
    raise EOFError(f"unknown GGUF value type {vtype}")
