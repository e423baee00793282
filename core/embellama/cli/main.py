"""Command line: ``embellama embed | rerank | serve | ingest | info | default-model | demo``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from embellama import __version__
from embellama.cli.inputs import CommandError, Lines, read_lines
from embellama.cli.outputs import atomic_output, command_warnings
from embellama.cli.outputs import progress_bar as _progress_bar
from embellama.config import ModelConfig, Pooling
from embellama.engine.engine import EmbeddingEngine
from embellama.errors import EmbellamaError, InvalidInputError
from embellama.files.default_model import default_model_path
from embellama.files.gguf import read_header
from embellama.model.families import detect_family, is_causal

__all__ = ["main"]


def _invalid_input(exc: InvalidInputError, lines: Lines) -> CommandError:
    """``exc`` in the command's terms: the input line, and the flag that changes the behaviour."""
    where = "input" if exc.index is None or exc.index >= len(lines.numbers) else f"line {lines.line(exc.index)}"
    preview = f" {exc.preview!r}" if exc.preview is not None else ""
    reason = exc.reason.split(" (pass ", 1)[0]  # the core's hint names Python options
    if exc.n_tokens is not None and exc.limit is not None and not reason.startswith("the query"):
        reason += " (over-long lines are cut to the limit unless --strict is given: leave it out, or pass --truncate)"
    return CommandError(f"{where}{preview}: {reason}")


def _load(engine: EmbeddingEngine, ns: argparse.Namespace, **options: Any) -> str:
    """Load the model of ``-m`` (default: the default model) under its file name; return that name."""
    path = ns.model or str(default_model_path())
    return engine.load_model(ModelConfig(model_path=path, n_threads=ns.threads, **options)).name


def _prompt(engine: EmbeddingEngine, name: str, ns: argparse.Namespace) -> str | None:
    """``--prompt``, else the model's prompt for ``--prompt-name`` (none if the model has none, as the adapters)."""
    if ns.prompt is not None:
        return str(ns.prompt)
    if ns.prompt_name is None:
        return None
    return engine.model_info(name).prompts.get(ns.prompt_name, "")


def _cmd_embed(ns: argparse.Namespace) -> int:
    lines = read_lines(ns.input, text_field=ns.text_field, skip_blank=ns.skip_blank)
    npy = ns.output.endswith(".npy")
    with contextlib.ExitStack() as stack:  # unwinds in reverse: the engine closes, then the output is committed
        out: IO[Any] = (
            sys.stdout if ns.output == "-" else stack.enter_context(atomic_output(ns.output, "wb" if npy else "w"))
        )
        stack.enter_context(command_warnings(lines.line))
        engine = stack.enter_context(EmbeddingEngine(cache_size=0))
        name = _load(
            engine,
            ns,
            pooling=ns.pooling,
            normalize=not ns.no_normalize,
            long_text_mode=ns.long_text_mode,
            dimensions=ns.dimensions,
        )
        prompt = _prompt(engine, name, ns)
        report, close = _progress_bar(unit="text", quiet=ns.quiet, force=ns.progress)
        try:
            vectors = engine.embed_batch(name, lines.texts, output="numpy", progress=report, prompt=prompt)
        except InvalidInputError as exc:
            raise _invalid_input(exc, lines) from None
        finally:
            close()
        if npy:
            np.save(out, vectors)
        else:
            for number, text, vec in zip(lines.numbers, lines.texts, vectors, strict=True):
                out.write(json.dumps({"line": number, "text": text, "embedding": vec.tolist()}) + "\n")
    return 0


def _cmd_rerank(ns: argparse.Namespace) -> int:
    lines = read_lines(ns.input, text_field=ns.text_field, skip_blank=ns.skip_blank)
    with command_warnings(lines.line), EmbeddingEngine(cache_size=0) as engine:
        config = ModelConfig(model_path=ns.model, long_text_mode=ns.long_text_mode, n_threads=ns.threads)
        name = engine.load_model(config).name
        try:
            ranking = engine.rerank(name, ns.query, lines.texts, top_n=ns.top_n, normalize=ns.normalize)
        except InvalidInputError as exc:
            raise _invalid_input(exc, lines) from None
    for ranked in ranking.top:
        line = lines.line(ranked.index)
        if ns.json:
            row = {"line": line, "index": ranked.index, "score": ranked.score, "document": ranked.document}
            sys.stdout.write(json.dumps(row) + "\n")
        else:
            sys.stdout.write(f"{ranked.score:9.4f}  line {line}: {ranked.document}\n")
    return 0


def _cmd_serve(ns: argparse.Namespace) -> int:
    import os

    try:
        from embellama.server.app import ServerLimits, serve
    except ImportError as exc:  # pragma: no cover - the server extra is missing
        print(f"embellama serve needs the server extra (pip install 'embellama[server]'): {exc}", file=sys.stderr)
        return 2
    names = list(ns.model_name or [])
    models = [(names[i] if i < len(names) else None, path) for i, path in enumerate(ns.model)]
    limits = {
        key: value
        for key, value in (
            ("drain_seconds", ns.drain_seconds),
            ("max_connections", ns.max_connections),
            ("header_timeout", ns.header_timeout),
            ("max_request_tokens", ns.max_request_tokens),
        )
        if value is not None
    }
    options = {"isolation": ns.isolation} if ns.isolation else {}
    serve(
        models,
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key or os.environ.get("EMBELLAMA_API_KEY") or None,
        limits=ServerLimits(**limits),
        long_text_mode=ns.long_text_mode,
        **options,
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
    from embellama.cli.demo import run

    run()
    return 0


def _cmd_ingest(ns: argparse.Namespace) -> int:
    try:
        from embellama.ingest.pipeline import ingest
    except ImportError as exc:  # pragma: no cover - pyarrow/lancedb missing
        print(f"embellama ingest needs lancedb and pyarrow (pip install lancedb): {exc}", file=sys.stderr)
        return 2
    report, close = _progress_bar(unit="row", quiet=ns.quiet, force=ns.progress)
    options: dict[str, Any] = {"long_text_mode": ns.long_text_mode}
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


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _progress_options(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    group.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")


def _input_options(cmd: argparse.ArgumentParser, what: str) -> None:
    cmd.add_argument(
        "input", nargs="?", default="-", help=f"{what}, one per line ('-': stdin; .jsonl/.ndjson: JSON lines)"
    )
    cmd.add_argument(
        "--text-field",
        "--text-column",
        dest="text_field",
        metavar="FIELD",
        help="read JSON lines and embed this field of each (default for .jsonl/.ndjson files: text)",
    )
    cmd.add_argument(
        "--skip-blank", action="store_true", help="leave blank lines out (default: a blank line is an error)"
    )


def _long_text_options(cmd: argparse.ArgumentParser, what: str, *, default: str) -> None:
    """``--long-text-mode`` (``ModelConfig.long_text_mode``), with ``--truncate`` as its short form, and
    ``--strict`` (``raise``) where cutting is the default."""
    group = cmd.add_mutually_exclusive_group()
    group.add_argument(
        "--long-text-mode",
        choices=["raise", "truncate", "mean"],
        help=f"over-long {what}: refuse them (raise), cut them to the model's limit with a warning (truncate), or "
        f"embed their chunks and average them (mean); default: {default}",
    )
    group.add_argument(
        "--truncate",
        dest="long_text_mode",
        action="store_const",
        const="truncate",
        help=f"cut over-long {what} to the model's limit, with a warning (--long-text-mode truncate)",
    )
    if default == "truncate":
        group.add_argument(
            "--strict",
            dest="long_text_mode",
            action="store_const",
            const="raise",
            help=f"refuse over-long {what} instead of cutting them (--long-text-mode raise)",
        )
    cmd.set_defaults(long_text_mode=default)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        llama = version("llama-cpp-python")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        llama = "missing"
    return f"embellama {__version__} (llama-cpp-python {llama})"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="embellama", description="Local GGUF text embeddings on llama.cpp.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed one text per line to JSONL or .npy (one row per line)")
    _input_options(embed, "texts")
    embed.add_argument("-o", "--output", default="-", help="output: .npy file, JSONL file, or '-' (stdout JSONL)")
    embed.add_argument("-m", "--model", help="GGUF path (default: the default model)")
    embed.add_argument("--pooling", default="model", choices=[p.value for p in Pooling if p is not Pooling.RANK])
    embed.add_argument("--no-normalize", action="store_true", help="return raw (unnormalized) vectors")
    prompts = embed.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt-name",
        choices=["query", "document"],
        help="put the model's query or document prompt in front of each text (none if the model has none)",
    )
    prompts.add_argument("--prompt", help="put this text in front of each text (e.g. 'query: ')")
    _long_text_options(embed, "lines", default="truncate")
    embed.add_argument("--dimensions", type=_positive, help="Matryoshka: keep the first N dimensions")
    embed.add_argument("--threads", type=_positive, help="threads for the model")
    _progress_options(embed)
    embed.set_defaults(func=_cmd_embed)
    rerank = sub.add_parser("rerank", help="score documents (one per line) against a query with a reranker GGUF")
    rerank.add_argument("model", help="reranker GGUF path (a classification head, or RANK pooling)")
    _input_options(rerank, "documents")
    rerank.add_argument("--query", required=True, help="the query")
    rerank.add_argument("-n", "--top-n", type=_positive, default=None, help="print only the N best")
    rerank.add_argument("--normalize", action="store_true", help="sigmoid scores to 0..1")
    _long_text_options(rerank, "documents", default="truncate")
    rerank.add_argument("--threads", type=_positive, default=None, help="threads for the model")
    rerank.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rerank.set_defaults(func=_cmd_rerank)
    srv = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (extra 'server')")
    srv.add_argument("--model", action="append", required=True, help="GGUF path (repeat for several models)")
    srv.add_argument("--model-name", action="append", help="API name of the --model at the same position")
    srv.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=None, help="require this bearer token (default: $EMBELLAMA_API_KEY)")
    _long_text_options(srv, "inputs (answered 400 by default)", default="raise")
    srv.add_argument("--isolation", choices=["thread", "process"], help="run each model in a child process "
                     "(a native crash then fails its requests instead of the server; default: thread)")  # fmt: skip
    srv.add_argument("--drain-seconds", type=float, help="at SIGTERM, seconds requests in flight get to finish "
                     "(default: 30); later ones are answered 503 and logged")  # fmt: skip
    srv.add_argument("--max-connections", type=int, help="open connections (default: about 3/4 of the open-file limit)")
    srv.add_argument("--header-timeout", type=float, help="seconds a client has to send its headers (default: 10)")
    srv.add_argument("--max-request-tokens", type=int, help="tokens one request may make the model process "
                     "(default: 524288)")  # fmt: skip
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
    _long_text_options(ing, "texts (failing the run by default)", default="raise")
    ing.add_argument("--skip-bad-rows", action="store_true", help="leave bad rows out (listed) instead of failing")
    _progress_options(ing)
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


def _os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embellama`` command.

    Exit status: 0 on success, 2 for bad input, options or files (one ``embellama: error:`` line on stderr, no
    traceback), 130 on Ctrl-C, and 141 — as a shell reports a process killed by ``SIGPIPE`` — when the reader of
    stdout went away (``embellama embed ... | head``), quietly.
    """
    ns = build_parser().parse_args(argv)
    try:
        status = int(ns.func(ns))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except (EmbellamaError, CommandError) as exc:
        message = str(exc)
    except OSError as exc:
        message = _os_error(exc)
    print(f"embellama: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
