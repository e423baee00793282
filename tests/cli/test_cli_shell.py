"""The `embellama` command as a shell tool: ``python -m embellama.cli`` run as a subprocess on the default model.

One output row per input line, errors as one line naming the line and the flag (exit 2), a closed stdout pipe
ending the command quietly, progress only on a terminal, JSON lines in, query/document prompts, ``--version``.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embellama
from embellama import EmbeddingEngine
from embellama.cli.main import build_parser
from tests.conftest import BATCH_TOL, MODEL_NAME

LINES = ["The Eiffel Tower is in Paris.", "Jupiter is the largest planet.", "Plants make energy from light.",
         "The Eiffel Tower is in Paris.", "Coffee is brewed from roasted beans."]  # fmt: skip
LONG = " ".join(["history"] * 600)  # ~600 tokens: over the default model's 256


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run ``python -m embellama.cli ARGS`` (PYTHONPATH inherited, so this tree's code runs)."""
    return subprocess.run(
        [sys.executable, "-m", "embellama.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def one_error_line(stderr: str) -> str:
    """The single ``embellama: error:`` line a failed command prints (and nothing else: no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embellama: error: "), stderr
    return lines[0]


def rows(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_every_line_is_one_row_in_order(model_path: Path, engine: EmbeddingEngine, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out.npy"
    proc = cli("embed", str(src), "-o", str(out), "-m", str(model_path))
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    want = engine.embed_batch(MODEL_NAME, LINES, output="numpy")
    assert got.shape == (5, 384) and np.abs(got - want).max() < BATCH_TOL  # row i is line i
    proc = cli("embed", "-m", str(model_path), input="\n".join(LINES))  # no final newline: still 5 lines
    assert [r["line"] for r in rows(proc.stdout)] == [1, 2, 3, 4, 5] and rows(proc.stdout)[4]["text"] == LINES[4]


def test_a_blank_line_is_an_error_naming_it_unless_skipped(model_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n\nfour\n  \nsix\n")
    out = tmp_path / "out.npy"
    proc = cli("embed", str(src), "-o", str(out), "-m", str(model_path))
    assert proc.returncode == 2
    assert "line 3 is blank" in one_error_line(proc.stderr) and "--skip-blank" in proc.stderr
    assert not out.exists()
    proc = cli("embed", str(src), "--skip-blank", "-m", str(model_path))
    assert proc.returncode == 0, proc.stderr
    assert [(r["line"], r["text"]) for r in rows(proc.stdout)] == [(1, "one"), (2, "two"), (4, "four"), (6, "six")]


def test_a_closed_stdout_pipe_ends_the_command_quietly(model_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "many.txt"
    src.write_text("".join(f"text number {i}\n" for i in range(300)))  # ~2.4 MB of JSONL: more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "embellama.cli", "embed", str(src), "-m", str(model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(100)  # `| head -c 100`
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert len(head) == 100 and stderr == ""
    # the same through a real shell pipeline
    shell = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m embellama.cli embed {src} -m {model_path} | head -c 100"],
        capture_output=True,
        timeout=120,
    )
    assert shell.returncode == 141 and len(shell.stdout) == 100 and shell.stderr == b""


def test_missing_and_unusable_files_are_one_line_and_exit_2(model_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    proc = cli("embed", str(missing))
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == f"embellama: error: {missing}: No such file or directory"
    proc = cli("embed", str(tmp_path))  # a directory
    assert proc.returncode == 2 and "Is a directory" in one_error_line(proc.stderr)
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    proc = cli("embed", str(src), "-o", str(tmp_path / "no-such-dir" / "out.npy"), "-m", str(model_path))
    assert proc.returncode == 2 and "No such file or directory" in one_error_line(proc.stderr)
    proc = cli("embed", str(src), "-m", str(tmp_path / "missing.gguf"))
    assert proc.returncode == 2 and "missing.gguf" in one_error_line(proc.stderr)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a model at all")
    proc = cli("embed", str(src), "-m", str(not_gguf))
    assert proc.returncode == 2 and "model.gguf" in one_error_line(proc.stderr)
    proc = cli("info", str(tmp_path))
    assert proc.returncode == 2 and "embellama: error:" in one_error_line(proc.stderr)


def _cache_cases(tmp_path: Path) -> dict[str, str]:
    """``$EMBELLAMA_CACHE`` values where the default model cannot be built, even as root."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {"under a regular file": str(a_file / "cache"), "in /proc": "/proc/embellama-cache"}


def test_an_unusable_cache_is_one_line_and_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    for what, cache in _cache_cases(tmp_path).items():
        env = dict(os.environ, EMBELLAMA_CACHE=cache)
        for args in (("embed", str(src)), ("default-model",)):
            proc = cli(*args, env=env)
            assert proc.returncode == 2, (what, args, proc.stderr)
            assert cache.split("/")[1] in one_error_line(proc.stderr), (what, proc.stderr)


def test_a_read_only_cache_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A real read-only file system (a read-only bind mount in a private mount namespace): root cannot write it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespaces here (unshare -m)")
    cache = tmp_path / "cache"
    cache.mkdir()
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    script = (
        f"mount --bind {cache} {cache} && mount -o remount,ro,bind {cache} && "
        f"EMBELLAMA_CACHE={cache} {sys.executable} -m embellama.cli embed {src}"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Read-only file system" in one_error_line(proc.stderr) and str(cache) in proc.stderr


def test_long_lines_are_cut_with_a_warning_naming_the_line_or_refused_with_strict(
    model_path: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"short one\nshort two\n{LONG}\nshort four\n")
    out = tmp_path / "out.npy"
    proc = cli("embed", str(src), "-o", str(out), "-m", str(model_path))
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (4, 384)
    warning = proc.stderr.strip()
    assert warning.startswith("embellama: warning: 1 of 4 lines was over the model's limit of 256 tokens"), warning
    assert "line 3" in warning and "--strict" in warning and "index" not in warning and "long_text_mode" not in warning
    out.unlink()
    proc = cli("embed", str(src), "-o", str(out), "-m", str(model_path), "--strict")
    assert proc.returncode == 2
    error = one_error_line(proc.stderr)
    assert error.startswith("embellama: error: line 3 'history history") and "limit of 256" in error
    assert "--strict" in error and "--truncate" in error
    for leak in ("index", "truncate=", "'cli'", "model '", "long_text_mode"):
        assert leak not in error, error
    assert not out.exists()  # checked before anything was written


def test_jsonl_input(model_path: Path, engine: EmbeddingEngine, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t, "body": t.upper()}) + "\n" for i, t in enumerate(LINES)))
    proc = cli("embed", str(corpus), "-m", str(model_path))  # a .jsonl file: its "text" field
    assert proc.returncode == 0, proc.stderr
    got = np.array([r["embedding"] for r in rows(proc.stdout)])
    assert np.abs(got - engine.embed_batch(MODEL_NAME, LINES, output="numpy")).max() < BATCH_TOL
    proc = cli("embed", "--text-field", "body", "-m", str(model_path), input=corpus.read_text())  # stdin
    assert [r["text"] for r in rows(proc.stdout)] == [t.upper() for t in LINES]


def test_prompt_name_uses_the_models_prompts(model_path: Path, tmp_path: Path) -> None:
    from tests.fixtures.families import build_family

    nomic = build_family("nomic-bert").gguf_path  # nomic-embed: "search_query: " / "search_document: "
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES[:3]) + "\n")

    def vectors(model: Path, *args: str) -> np.ndarray:
        proc = cli("embed", str(src), "-m", str(model), *args)
        assert proc.returncode == 0, proc.stderr
        return np.array([r["embedding"] for r in rows(proc.stdout)])

    plain, query = vectors(nomic), vectors(nomic, "--prompt-name", "query")
    assert np.abs(query - vectors(nomic, "--prompt", "search_query: ")).max() < 1e-5
    assert (
        np.abs(vectors(nomic, "--prompt-name", "document") - vectors(nomic, "--prompt", "search_document: ")).max()
        < 1e-5
    )
    assert np.abs(query - plain).max() > 1e-2  # the prompt changed the vectors
    # the default model has no prompts: --prompt-name embeds the text as is (as the adapters do)
    assert np.abs(vectors(model_path, "--prompt-name", "query") - vectors(model_path)).max() < 1e-6
    proc = cli("embed", str(src), "--prompt-name", "query", "--prompt", "x: ")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_progress_is_drawn_only_on_a_terminal(model_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    out = str(tmp_path / "out.npy")
    proc = cli("embed", str(src), "-o", out, "-m", str(model_path))  # stderr is a pipe: a log file
    assert proc.returncode == 0 and proc.stderr == ""
    proc = cli("embed", str(src), "-o", out, "-m", str(model_path), "--progress")
    assert proc.returncode == 0 and "5/5" in proc.stderr and "text/s" in proc.stderr

    def on_a_terminal(*args: str) -> str:
        leader, follower = pty.openpty()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "embellama.cli", "embed", str(src), "-o", out, "-m", str(model_path), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=follower,
            )
            os.close(follower)
            seen = b""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            assert child.wait(timeout=120) == 0
            return seen.decode(errors="replace")
        finally:
            os.close(leader)

    assert "5/5" in on_a_terminal()
    assert "5/5" not in on_a_terminal("-q")


def test_version(tmp_path: Path) -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"embellama {embellama.__version__} (llama-cpp-python {version('llama-cpp-python')})\n"


def test_short_options_mean_the_same_in_every_subcommand() -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert subcommands is not None
    meaning: dict[str, set[str]] = {}
    for sub in subcommands.values():
        for action in sub._actions:
            shorts = [o for o in action.option_strings if len(o) == 2 and o != "-h"]
            longs = [o for o in action.option_strings if o.startswith("--")]
            for short in shorts:
                meaning.setdefault(short, set()).update(longs[:1])
    assert all(len(longs) == 1 for longs in meaning.values()), meaning
    assert meaning["-q"] == {"--quiet"} and meaning["-m"] == {"--model"} and meaning["-o"] == {"--output"}
    proc = cli("embed", "--pooling", "rank")  # a reranker's pooling is not an embedding
    assert proc.returncode == 2 and "invalid choice: 'rank'" in proc.stderr


def test_ctrl_c_stops_quietly_with_130(model_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "many.txt"
    src.write_text("".join(f"text number {i} " * 20 + "\n" for i in range(20_000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "embellama.cli", "embed", str(src), "-o", str(tmp_path / "out.npy"), "--progress",
         "-m", str(model_path)],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    while seen.count("text/s") < 2:  # embedding has started (the bar was drawn and updated)
        char = proc.stderr.read(1)
        assert char, seen
        seen += char
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in proc.stderr.read()
    assert not (tmp_path / "out.npy").exists()


def test_rerank_rows_name_lines(tmp_path: Path) -> None:
    from tests.fixtures.rerankers import SAMPLE_DOCUMENTS, SAMPLE_QUERY, cross_encoder

    ce = cross_encoder()
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SAMPLE_DOCUMENTS) + "\n\n")
    proc = cli("rerank", str(ce.gguf_path), str(docs), "--query", SAMPLE_QUERY)
    assert proc.returncode == 2 and f"line {len(SAMPLE_DOCUMENTS) + 1} is blank" in one_error_line(proc.stderr)
    proc = cli("rerank", str(ce.gguf_path), str(docs), "--query", SAMPLE_QUERY, "--skip-blank", "--json", "-n", "2")
    assert proc.returncode == 0, proc.stderr
    best = int(np.argmax(ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)))
    top = rows(proc.stdout)
    assert len(top) == 2 and top[0]["line"] == best + 1 and top[0]["document"] == SAMPLE_DOCUMENTS[best]
    docs.write_text(f"{SAMPLE_DOCUMENTS[0]}\n{LONG}\n")
    proc = cli("rerank", str(ce.gguf_path), str(docs), "--query", SAMPLE_QUERY, "--strict")
    assert proc.returncode == 2
    error = one_error_line(proc.stderr)
    assert error.startswith("embellama: error: line 2 ") and "--strict" in error and "long_text_mode" not in error
    proc = cli("rerank", str(ce.gguf_path), str(docs), "--query", SAMPLE_QUERY)
    assert proc.returncode == 0 and "line 2" in proc.stderr and "--strict" in proc.stderr
