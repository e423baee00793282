"""Reading the ``embellama`` command's input: one text per line (plain text or JSONL), each with its line number.

Every line becomes one text, so output rows line up with input lines; a blank line is refused (naming it) unless
the caller asked to skip blank lines. Problems are :class:`CommandError` s naming the line and the flag that
changes the behaviour, never a Python option.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["JSONL_SUFFIXES", "CommandError", "Lines", "read_lines"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
"""Input files with these suffixes are read as JSONL (their ``text`` field) unless ``--text-field`` names another."""


class CommandError(Exception):
    """A problem with the command's input or options: reported as one line on stderr, exit status 2."""


@dataclass
class Lines:
    """The texts read from the input, and the 1-based line number each came from."""

    texts: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)

    def line(self, index: int) -> int:
        """The input line of the text at ``index``."""
        return self.numbers[index]


def _raw_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    source: BinaryIO = Path(path).open("rb")  # noqa: SIM115 - closed below; OSError reaches the CLI's handler
    with source:
        yield from source


def _decode(raw: bytes, number: int) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})"
        ) from None


def _field(text: str, number: int, name: str) -> str:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise CommandError(f"line {number}: not valid JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise CommandError(f"line {number}: expected a JSON object with a {name!r} field, got {type(row).__name__}")
    if name not in row:
        fields = ", ".join(repr(k) for k in list(row)[:8]) or "none"
        raise CommandError(f"line {number}: no field {name!r} (fields: {fields}); choose one with --text-field")
    value = row[name]
    if not isinstance(value, str):
        raise CommandError(f"line {number}: field {name!r} is a {type(value).__name__}, not a string")
    return value


def read_lines(path: str, *, text_field: str | None = None, skip_blank: bool = False) -> Lines:
    """Every text of ``path`` (``"-"``: stdin), one per line, with its line number.

    Args:
        path: A file, or ``"-"`` for stdin. A name ending in ``.jsonl``/``.ndjson`` is read as JSONL.
        text_field: Read JSONL and take this field of each object as the text. Defaults to ``"text"`` for a
            ``.jsonl``/``.ndjson`` file, else plain lines.
        skip_blank: Leave blank (empty or whitespace-only) lines out instead of refusing them. Defaults to False:
            every line is one row.

    Raises:
        CommandError: A blank line (without ``skip_blank``), a line that is not UTF-8, or a JSONL line that is not
            an object with a string ``text_field``.
        OSError: The file cannot be read.
    """
    if text_field is None and path.lower().endswith(JSONL_SUFFIXES):
        text_field = "text"
    lines = Lines()
    for number, raw in enumerate(_raw_lines(path), start=1):
        text = _decode(raw, number)
        if not text.strip():
            if skip_blank:
                continue
            raise CommandError(
                f"line {number} is blank: each input line becomes one output row (pass --skip-blank to leave "
                "blank lines out)"
            )
        if text_field is not None:
            text = _field(text, number, text_field)
            if not text.strip():
                if skip_blank:
                    continue
                raise CommandError(f"line {number}: field {text_field!r} is blank (pass --skip-blank to leave it out)")
        lines.texts.append(text)
        lines.numbers.append(number)
    return lines
