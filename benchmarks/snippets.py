"""What the small same-run benchmarks share: running a snippet in a fresh process, interleaving peers over rounds,
and printing/writing the resulting table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["REPO", "interleave", "publish", "run_snippet"]

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def run_snippet(code: str, *args: str, pythonpath: Sequence[Path] = (), cwd: Path = REPO) -> dict[str, Any]:
    """Run ``code`` with ``python -c`` in a fresh process (this repo's ``core`` and root importable, after
    ``pythonpath``); return the JSON object its last stdout line holds."""
    paths = [*pythonpath, REPO / "core", REPO]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in paths))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600, cwd=cwd
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def interleave(
    peers: Sequence[T], rounds: int, measure: Callable[[T], dict[str, Any]]
) -> dict[T, list[dict[str, Any]]]:
    """Measure every peer once per round, in alternating order (so no peer always runs first)."""
    runs: dict[T, list[dict[str, Any]]] = {peer: [] for peer in peers}
    for r in range(rounds):
        for peer in list(peers) if r % 2 == 0 else list(reversed(peers)):
            runs[peer].append(measure(peer))
            print(peer, runs[peer][-1], file=sys.stderr, flush=True)
    return runs


def publish(lines: list[str], rounds: int, out: Path | None) -> None:
    """Print the markdown table and write it to ``out`` (with how it was measured) when given."""
    table = "\n".join(lines)
    print(table)
    if out is not None:
        out.write_text(f"{rounds} interleaved rounds, fresh process per peer and round.\n\n{table}\n")
