"""Command line: ``embellama embed | rerank | serve | ingest | info | default-model | demo``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig, Pooling
from .default_model import default_model_path
from .engine import EmbeddingEngine
from .errors import EmbellamaError
from .families import detect_family, is_causal
from .gguf import read_header

__all__ = ["main"]


def _progress_bar(*, unit: str, quiet: bool = False) -> tuple[Callable[[int, int], None] | None, Callable[[], object]]:
    """A ``progress(done, total)`` callback drawing on stderr (tqdm when installed; ``None`` when ``quiet``) and
    its closer."""
    if quiet:
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
            bars.append(tqdm(total=total, unit=unit, file=sys.stderr))
        bars[0].update(done - bars[0].n)

    return update, lambda: bars and bars[0].close()


def _cmd_embed(ns: argparse.Namespace) -> int:
    source = sys.stdin if ns.input == "-" else open(ns.input, encoding="utf-8")  # noqa: SIM115
    with source:
        texts = [line.rstrip("\n") for line in source if line.strip()]
    model = ns.model or str(default_model_path())
    config = ModelConfig(
        model_path=model,
        model_name="cli",
        pooling=ns.pooling,
        normalize=not ns.no_normalize,
        truncate=ns.truncate,
        dimensions=ns.dimensions,
        n_threads=ns.threads,
    )
    with EmbeddingEngine(cache_size=0) as engine:
        engine.load_model(config)
        report, close = _progress_bar(unit="text", quiet=ns.quiet)
        try:
            vectors = engine.embed_batch("cli", texts, output="numpy", progress=report)
        finally:
            close()
    if ns.output.endswith(".npy"):
        np.save(ns.output, vectors)
    else:
        out = sys.stdout if ns.output == "-" else open(ns.output, "w", encoding="utf-8")  # noqa: SIM115
        with out:
            for text, vec in zip(texts, vectors, strict=False):
                out.write(json.dumps({"text": text, "embedding": vec.tolist()}) + "\n")
    return 0


def _cmd_rerank(ns: argparse.Namespace) -> int:
    source = sys.stdin if ns.input == "-" else open(ns.input, encoding="utf-8")  # noqa: SIM115
    with source:
        documents = [line.rstrip("\n") for line in source if line.strip()]
    config = ModelConfig(model_path=ns.model, model_name="cli", truncate=not ns.strict, n_threads=ns.threads)
    with EmbeddingEngine(cache_size=0) as engine:
        engine.load_model(config)
        ranking = engine.rerank("cli", ns.query, documents, top_n=ns.top_n, normalize=ns.normalize)
    if ns.json:
        for ranked in ranking.top:
            print(json.dumps({"index": ranked.index, "score": ranked.score, "document": ranked.document}))
    else:
        for ranked in ranking.top:
            print(f"{ranked.score:9.4f}  [{ranked.index}] {ranked.document}")
    return 0


def _cmd_serve(ns: argparse.Namespace) -> int:
    import os

    try:
        from embellama_integrations.server import serve
    except ImportError as exc:  # pragma: no cover - the server extra is missing
        print(f"embellama serve needs the server extra (pip install 'embellama[server]'): {exc}", file=sys.stderr)
        return 2
    names = list(ns.model_name or [])
    models = [(names[i] if i < len(names) else None, path) for i, path in enumerate(ns.model)]
    serve(
        models,
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key or os.environ.get("EMBELLAMA_API_KEY") or None,
        truncate=ns.truncate,
    )
    return 0


def _cmd_info(ns: argparse.Namespace) -> int:
    header = read_header(ns.path)
    summary = {
        "path": str(Path(ns.path).resolve()),
        "size_bytes": Path(ns.path).stat().st_size,
        "gguf_version": header.version,
        "tensors": header.n_tensors,
        "architecture": header.architecture,
        "name": header.metadata.get("general.name"),
        "embedding_length": header.arch_value("embedding_length"),
        "context_length": header.arch_value("context_length"),
        "pooling_type": header.arch_value("pooling_type"),
        "causal": is_causal(header.metadata),
        "file_type": header.metadata.get("general.file_type"),
        "max_seq_length": header.metadata.get("embellama.max_seq_length"),
    }
    family = detect_family(header.metadata)
    summary["family"] = {
        "name": family.name,
        "pooling": family.pooling,
        "add_eos": family.add_eos,
        "prompts": family.prompts,
        "dimensions": list(family.dimensions),
    }
    if ns.all:
        summary["metadata"] = header.metadata
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_default_model(ns: argparse.Namespace) -> int:
    print(default_model_path())
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run

    run()
    return 0


def _cmd_ingest(ns: argparse.Namespace) -> int:
    try:
        from embellama_integrations.ingest import ingest
    except ImportError as exc:  # pragma: no cover - pyarrow/lancedb missing
        print(f"embellama ingest needs lancedb and pyarrow (pip install lancedb): {exc}", file=sys.stderr)
        return 2
    report, close = _progress_bar(unit="row", quiet=ns.quiet)
    options: dict[str, Any] = {"truncate": True} if ns.truncate else {}
    if ns.pooling != "model":
        options["pooling"] = ns.pooling
    try:
        result = ingest(
            ns.corpus,
            ns.db,
            table=ns.table,
            text_column=ns.text_column,
            id_column=ns.id_column,
            model_path=ns.model,
            ray_address=ns.ray,
            num_actors=ns.num_actors,
            batch_size=ns.batch_size,
            mode=ns.mode,
            resume=ns.resume,
            on_error="collect" if ns.skip_bad_rows else "raise",
            progress=report,
            compact=not ns.no_compact,
            write_rows=ns.write_rows,
            **options,
        )
    finally:
        close()
    for row_id, error in result.errors.items():
        print(f"skipped {row_id}: {error}", file=sys.stderr)
    notes = []
    if result.skipped:
        notes.append(f"{result.skipped} already in the table, not embedded again")
    if result.duplicates:
        notes.append(f"{result.duplicates} with an id already written (one row per id kept)")
    print(
        f"ingested {result.written} of {result.rows} rows into {ns.db} table {ns.table!r} in {result.seconds:.1f} s "
        f"({result.texts_per_second:.0f} rows/s); the table holds {result.table_rows} rows"
        + "".join(f"; {note}" for note in notes),
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="embellama", description="Local GGUF text embeddings on llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed one text per line to JSONL or .npy")
    embed.add_argument("input", nargs="?", default="-", help="text file, one text per line ('-': stdin)")
    embed.add_argument("-o", "--output", default="-", help="output: .npy file, JSONL file, or '-' (stdout JSONL)")
    embed.add_argument("-m", "--model", help="GGUF path (default: the default model)")
    embed.add_argument("--pooling", default="model", choices=[p.value for p in Pooling])
    embed.add_argument("--no-normalize", action="store_true", help="return raw (unnormalized) vectors")
    embed.add_argument("--truncate", action="store_true", help="cut over-long texts instead of failing")
    embed.add_argument("--dimensions", type=int, help="Matryoshka: keep the first N dimensions")
    embed.add_argument("--threads", type=int, help="threads for the model")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_cmd_embed)
    rerank = sub.add_parser("rerank", help="score documents (one per line) against a query with a reranker GGUF")
    rerank.add_argument("model", help="reranker GGUF path (a classification head, or RANK pooling)")
    rerank.add_argument("input", nargs="?", default="-", help="documents, one per line ('-': stdin)")
    rerank.add_argument("-q", "--query", required=True, help="the query")
    rerank.add_argument("-n", "--top-n", type=int, default=None, help="print only the N best")
    rerank.add_argument("--normalize", action="store_true", help="sigmoid scores to 0..1")
    rerank.add_argument("--strict", action="store_true", help="refuse over-long documents instead of cutting them")
    rerank.add_argument("--threads", type=int, default=None)
    rerank.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rerank.set_defaults(func=_cmd_rerank)
    srv = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (extra 'server')")
    srv.add_argument("--model", action="append", required=True, help="GGUF path (repeat for several models)")
    srv.add_argument("--model-name", action="append", help="API name of the --model at the same position")
    srv.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=None, help="require this bearer token (default: $EMBELLAMA_API_KEY)")
    srv.add_argument("--truncate", action="store_true", help="cut over-long inputs instead of answering 400")
    srv.set_defaults(func=_cmd_serve)
    ing = sub.add_parser("ingest", help="embed a JSONL/Parquet corpus into a LanceDB table (optionally on Ray)")
    ing.add_argument("corpus", help="JSONL or Parquet file, or a directory of them: one document per row")
    ing.add_argument("--db", required=True, help="LanceDB directory (created if missing)")
    ing.add_argument("--table", default="documents", help="table name (default: documents)")
    ing.add_argument("-m", "--model", help="GGUF path (default: the default model)")
    ing.add_argument("--text-column", default="text", help="column to embed (default: text)")
    ing.add_argument("--id-column", default="id", help="row id column (default: id; row numbers if missing)")
    ing.add_argument("--ray", metavar="ADDRESS", help="embed on Ray: 'local', 'auto' or a cluster address")
    ing.add_argument("--num-actors", type=int, help="Ray actors (default: one per cluster CPU, less one for reads)")
    ing.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    ing.add_argument(
        "--mode",
        default="create",
        choices=["create", "overwrite", "append"],
        help="create/overwrite: the table appears complete at the end; append: add rows (never an id twice)",
    )
    ing.add_argument("--resume", action="store_true", help="continue an interrupted run: embed only ids not written")
    ing.add_argument("--no-compact", action="store_true", help="do not compact the table's fragments at the end")
    ing.add_argument("--write-rows", type=int, default=8192, help="rows per table commit (default: 8192)")
    ing.add_argument("--pooling", default="model", choices=[p.value for p in Pooling])
    ing.add_argument("--truncate", action="store_true", help="cut over-long texts instead of failing")
    ing.add_argument("--skip-bad-rows", action="store_true", help="leave bad rows out (listed) instead of failing")
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ing.set_defaults(func=_cmd_ingest)
    info = sub.add_parser("info", help="print a GGUF model's metadata as JSON")
    info.add_argument("path")
    info.add_argument("--all", action="store_true", help="include every metadata key")
    info.set_defaults(func=_cmd_info)
    sub.add_parser("default-model", help="print the default model's path (building it if needed)").set_defaults(
        func=_cmd_default_model
    )
    sub.add_parser("demo", help="embed a small corpus and run a nearest-neighbour search").set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embellama`` command."""
    ns = build_parser().parse_args(argv)
    try:
        return int(ns.func(ns))
    except EmbellamaError as exc:
        print(f"embellama: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
