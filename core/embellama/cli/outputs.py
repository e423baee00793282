"""What the ``embellama`` command writes besides its results: progress, warnings, and files replaced atomically.

Progress goes to stderr only when stderr is a terminal (or ``--progress`` asks), so log files never get bar
redraws. Library warnings are printed as ``embellama: warning: ...`` lines; the truncation warning is reworded in
the command's terms (line numbers and flags, not indices and Python options).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["ProgressCallback", "atomic_output", "command_warnings", "progress_bar"]

ProgressCallback = Callable[[int, int], None]


def progress_bar(
    *, unit: str, quiet: bool = False, force: bool = False
) -> tuple[ProgressCallback | None, Callable[[], object]]:
    """A ``progress(done, total)`` callback drawing on stderr, and its closer.

    Args:
        unit: What is counted (``"text"``, ``"row"``).
        quiet: No progress at all (``-q``). Defaults to False.
        force: Draw even when stderr is not a terminal (``--progress``). Defaults to False: only on a terminal.
    """
    if quiet or not (force or sys.stderr.isatty()):
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the progress extra

        def report(done: int, total: int) -> None:
            print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

        return report, lambda: print(file=sys.stderr)
    bars: list[Any] = []  # made at the first update, so an early error prints no empty bar

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit=unit, file=sys.stderr, disable=False))
        bars[0].update(done - bars[0].n)

    return update, lambda: bars and bars[0].close()


class _Warnings(logging.Handler):
    """Prints embellama's warnings (not llama.cpp's load chatter) as one ``embellama: warning:`` line each."""

    def __init__(self, line_of: Callable[[int], int] | None, strict_flag: str) -> None:
        super().__init__(logging.WARNING)
        self.line_of = line_of
        self.strict_flag = strict_flag

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("embellama.llama_cpp") and record.levelno < logging.ERROR:
            return
        try:
            text = self._truncation(record) if record.name == "embellama.engine.truncation" else None
            text = text or record.getMessage()
            print(f"embellama: {record.levelname.lower()}: {text}", file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover - as logging does: a broken handler never breaks the command
            self.handleError(record)

    def _truncation(self, record: logging.LogRecord) -> str | None:
        # truncation.py's arguments: count, total, model name, limit, first index (or "-"), its tokens, its preview
        args = record.args
        if not isinstance(args, tuple) or len(args) != 7 or self.line_of is None:
            return None
        count, total, _, limit, first, n_tokens, preview = args
        if not isinstance(first, int):
            return None
        try:
            line = self.line_of(first)
        except IndexError:
            return None
        verb = "was" if count == 1 else "were"
        return (
            f"{count} of {total} lines {verb} over the model's limit of {limit} tokens and cut to it "
            f"(first: line {line}, {n_tokens} tokens, {preview!r}); pass {self.strict_flag} to refuse over-long lines "
            "instead"
        )


@contextlib.contextmanager
def command_warnings(line_of: Callable[[int], int] | None = None, *, strict_flag: str = "--strict") -> Iterator[None]:
    """Print embellama's warnings on stderr while the block runs, indices as input lines (``line_of``)."""
    root = logging.getLogger("embellama")
    handler = _Warnings(line_of, strict_flag)
    level = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """A file that replaces ``path`` when the block succeeds, and leaves it untouched when the block fails.

    The temporary file is made beside ``path`` first, so an unwritable destination fails before any work.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)  # as open() would have made it
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
