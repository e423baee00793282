"""How deep one LangChain call goes: the embellama modules (and threads) whose Python code runs during it.

One ``EmbellamaEmbeddings(model_path=...).embed_documents([...])`` call on a cache miss (the model is loaded and
warmed by an earlier call, so loading is not counted) is traced with :func:`sys.setprofile` and
:func:`threading.setprofile`; every Python frame whose file lies under ``core/embellama`` or
``embellama_integrations`` names its module, and calls from one such module into another are counted (a face that
calls down many times is one the call keeps climbing back into). Run it with
``python -m benchmarks.call_path [--out FILE]``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

TRACED = ("embellama", "embellama_integrations")
"""Packages whose modules count (the core and its framework adapters), wherever they are imported from."""


@dataclass
class CallPath:
    """The embellama modules that ran during a traced call, and the threads each ran on."""

    modules: dict[str, set[str]] = field(default_factory=dict)
    """Module name -> names of the threads it ran on."""
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(caller module, called module) -> calls from one embellama module into another."""

    @property
    def threads(self) -> set[str]:
        """Every thread on which embellama code ran."""
        return {t for names in self.modules.values() for t in names}

    def lines(self) -> list[str]:
        """A report: one line per module (with its threads), then the counts."""
        rows = [f"{name}  [{', '.join(sorted(threads))}]" for name, threads in sorted(self.modules.items())]
        rows.append(f"modules: {len(self.modules)}")
        rows.append(f"threads: {len(self.threads)}")
        rows.append("calls between modules (caller -> called: count):")
        rows += [f"  {a} -> {b}: {n}" for (a, b), n in sorted(self.calls.items())]
        return rows

    def calls_from(self, module: str) -> int:
        """Calls ``module`` made into other embellama modules (each one a trip down and back up)."""
        return sum(n for (caller, _), n in self.calls.items() if caller == module)


def _roots() -> list[Path]:
    """The folders of the traced packages, as imported."""
    return [Path(importlib.import_module(name).__file__ or "").resolve().parent for name in TRACED]


def _module(filename: str, roots: list[Path], cache: dict[str, str | None]) -> str | None:
    """The dotted module name of an embellama source file, or None for any other file."""
    if filename in cache:
        return cache[filename]
    name = None
    path = Path(filename).resolve()
    for top in roots:
        if path.is_relative_to(top):
            parts = path.relative_to(top.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            break
    cache[filename] = name
    return name


@contextmanager
def profiling() -> Iterator[Callable[[Callable[[], Any]], CallPath]]:
    """Install the profile hooks (for this thread and every thread started inside); yield ``trace(fn)``, which runs
    ``fn`` and returns the modules that ran while it ran, on any thread started inside the block.

    Threads must be started inside the block (``threading.setprofile`` reaches only new threads): build the
    objects that start workers there, and trace only the call to measure.
    """
    recording = threading.Event()
    path = CallPath()
    roots = _roots()
    cache: dict[str, str | None] = {}

    def hook(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call" or not recording.is_set():
            return
        name = _module(frame.f_code.co_filename, roots, cache)
        if name is None:
            return
        path.modules.setdefault(name, set()).add(threading.current_thread().name)
        caller = frame.f_back
        called_from = None if caller is None else _module(caller.f_code.co_filename, roots, cache)
        if called_from is not None and called_from != name:
            path.calls[called_from, name] += 1

    def trace(fn: Callable[[], Any]) -> CallPath:
        path.modules.clear()
        path.calls.clear()
        recording.set()
        try:
            fn()
        finally:
            recording.clear()
        return CallPath({name: set(threads) for name, threads in path.modules.items()}, Counter(path.calls))

    threading.setprofile(hook)
    sys.setprofile(hook)
    try:
        yield trace
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def measure(model_path: Path | None = None, n_texts: int = 8) -> CallPath:
    """Trace one LangChain ``embed_documents`` call of ``n_texts`` new texts (cache misses) on a warm model."""
    from embellama.files.default_model import default_model_path
    from embellama_integrations.langchain import EmbellamaEmbeddings

    with profiling() as trace:
        embeddings = EmbellamaEmbeddings(model_path=str(model_path or default_model_path()))
        embeddings.embed_documents(["warm up the model"])
        fresh = uuid.uuid4().hex  # texts no cache has seen
        return trace(lambda: embeddings.embed_documents([f"text {i} {fresh}" for i in range(n_texts)]))


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally save) the modules and threads one LangChain ``embed_documents`` call runs through."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    report = "\n".join(measure(args.model_path).lines()) + "\n"
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
