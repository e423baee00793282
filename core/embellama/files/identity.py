"""The identity of a model file: which file it is on disk, and what it contains.

Cache keys and shared weights are bound to a loaded model's identity, never to a name or a path: a GGUF replaced
on disk (an atomic rename gives it a new inode) is a different model, and two files with equal sizes but
different contents have different fingerprints. The content hash covers the whole file; it is computed once per
(device, inode, size, mtime) and remembered in this process and under the cache folder, so a 5 GB GGUF is read
once, not at every load.

The cross-process record is a small JSON file under ``$EMBELLAMA_CACHE/fingerprints`` (created ``0700``), written
atomically through a fresh ``O_EXCL`` temp file and read without following symlinks (see
:mod:`embellama.files.cache_folder`):
a symlink or FIFO planted at a record's name is neither followed nor written through, and a record that is not a
regular file holding a well-formed 16-hex-digit value is ignored (the file is hashed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from embellama import lifecycle
from embellama.files import cache_folder as _files

__all__ = ["FileIdentity", "file_fingerprint", "file_identity"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileIdentity:
    """Which file a path named at one moment: device, inode, size and modification time (ns)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    def key(self) -> str:
        """A compact string form (file names, cache keys)."""
        return f"{self.device:x}-{self.inode:x}-{self.size:x}-{self.mtime_ns:x}"


def file_identity(path: str | Path) -> FileIdentity:
    """The identity of the file ``path`` names now (follows symlinks)."""
    st = os.stat(path)
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_memo: dict[FileIdentity, str] = {}
_memo_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _memo_lock
    _memo_lock = threading.Lock()


lifecycle.at_fork_in_child(_reset_after_fork)


_STORE = "fingerprints"
_HEX16 = re.compile(r"[0-9a-f]{16}")


def _store() -> Path:
    return _files.cache_root() / _STORE


def file_fingerprint(path: str | Path) -> str:
    """A 16-hex-digit content hash (SHA-256) of the whole file at ``path``.

    Computed once per file identity; later calls for the same unchanged file return the remembered value
    (in-process, and from ``$EMBELLAMA_CACHE/fingerprints`` across processes).
    """
    identity = file_identity(path)
    with _memo_lock:
        known = _memo.get(identity)
    if known is not None:
        return known
    record = _store() / f"{identity.key()}.json"
    known = _recalled(record)
    if known is None:
        known = _hash(path)
        if file_identity(path) == identity:  # not rewritten while we read it: safe to remember
            _remember(record, known)
    with _memo_lock:
        _memo[identity] = known
    return known


def _hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()[:16]


def _recalled(record: Path) -> str | None:
    """The fingerprint a record holds, or None if it is missing, not a regular file, or not well-formed."""
    raw = _files.read_record(record, 4096)
    if raw is None:
        return None
    try:
        value = json.loads(raw)["sha256"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and _HEX16.fullmatch(value) else None


def _remember(record: Path, fingerprint: str) -> None:
    try:
        _files.private_dir(_STORE)
        _files.atomic_write(record, json.dumps({"sha256": fingerprint}).encode())
    except OSError:  # a read-only cache folder only costs a re-hash in the next process
        pass
