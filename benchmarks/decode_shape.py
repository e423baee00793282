"""Decode shape vs ONNX Runtime fp32: the LangChain adapter with larger decodes, same run.

``python -m benchmarks.decode_shape [--rounds 2] [--out DIR]`` runs ``benchmarks.run``'s main phase with these
peers (fresh process per peer and round, interleaved) and writes the usual report into ``DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .peers import PeerSpec
from .run import run_benchmark

PEERS = [
    PeerSpec("LangChain, defaults (256 tokens / 8 texts per decode)", "langchain-embellama"),
    PeerSpec("LangChain, 512 / 16", "langchain-embellama", {"batch_tokens": 512, "max_texts_per_decode": 16}),
    PeerSpec("LangChain, 1024 / 32", "langchain-embellama", {"batch_tokens": 1024, "max_texts_per_decode": 32}),
    PeerSpec(
        "LangChain, 1x2 threads, 1024 / 48",
        "langchain-embellama",
        {"batch_tokens": 1024, "max_texts_per_decode": 48, "n_workers": 1, "n_threads": 2},
    ),
    PeerSpec("ONNX Runtime fp32", "onnxruntime"),
]


def main() -> int:
    """Run the comparison and write its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/embellama-decode-shape"))
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    run_benchmark(rounds=ns.rounds, out_dir=ns.out, peers=PEERS, phases=("main",), log=print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
