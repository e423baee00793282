"""Files embellama writes, made safe in a cache folder others might share.

- The cache folder (``$EMBELLAMA_CACHE``, else ``~/.cache/embellama``) and its subfolders are created ``0700``
  when embellama creates them; folders that already exist keep their mode.
- Every write goes to a fresh name made with ``O_CREAT | O_EXCL`` (:func:`tempfile.mkstemp`), or into a fresh
  ``0700`` staging folder (:func:`tempfile.mkdtemp`) when another program writes the file, then is renamed over
  the target (:func:`os.replace`): a reader sees the old file or the new one, never half of one, and a symlink
  planted at a predictable name is never followed (the rename replaces the link itself, not what it points to).
- Small records are read with ``O_NOFOLLOW | O_NONBLOCK`` and only when they are regular files, so a planted
  symlink or FIFO can neither redirect nor block a read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "cache_root", "private_dir", "read_record", "staging_dir"]

CACHE_ENV = "EMBELLAMA_CACHE"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def cache_root() -> Path:
    """Where embellama keeps built models and fingerprints: ``$EMBELLAMA_CACHE``, else ``~/.cache/embellama``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "embellama").expanduser()


def private_dir(*parts: str) -> Path:
    """The cache folder ``cache_root() / parts...``, creating what is missing: the cache root and the folders
    below it ``0700``, the root's parents (e.g. ``~/.cache``) with the default mode. Existing folders are left as
    they are.

    Raises:
        OSError: a folder cannot be created (read-only or full file system, a file in the way).
    """
    path = cache_root()
    path.parent.mkdir(parents=True, exist_ok=True)
    _mkdir_private(path)
    for part in parts:
        path = path / part
        _mkdir_private(path)
    return path


def _mkdir_private(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder") from None


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically: a fresh ``O_EXCL`` temp file beside it, then a rename.

    The temp file is removed if anything fails. Raises ``OSError`` as the file system does.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh ``0700`` folder in ``parent`` for a file another program writes (llama.cpp, a child process),
    removed with whatever is left in it on exit. Nobody else can plant anything in it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_record(path: Path, limit: int = 1 << 16) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``path``, or None when it is missing, unreadable, a symlink
    or anything else than a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
