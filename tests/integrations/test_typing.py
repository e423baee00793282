"""What a type checker sees in a user's code: the adapters' model options are typed fields (written out in
``embellama_integrations._options``), not ``Any``. Runs mypy on a small user file, as a user's CI would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

OPTIONS = ("normalize", "n_threads", "long_text_mode", "request_timeout")
USER_CODE = "\n".join(
    [
        "from embellama_integrations.langchain import EmbellamaEmbeddings",
        "from embellama_integrations.llama_index import EmbellamaEmbedding",
        'lc = EmbellamaEmbeddings(model_path="m.gguf")',
        'li = EmbellamaEmbedding(model_path="m.gguf")',
        *(f"reveal_type({adapter}.{option})" for adapter in ("lc", "li") for option in OPTIONS),
    ]
)

_REVEALED = re.compile(r'^\S+:\d+: note: Revealed type is "(.*)"$', re.MULTILINE)


def _plain(revealed: str) -> str:
    """A revealed type in one spelling across mypy versions: ``Union[builtins.int, None]`` → ``int | None``."""
    revealed = revealed.replace("builtins.", "")
    union = re.fullmatch(r"Union\[(.*)\]", revealed)
    return " | ".join(part.strip() for part in union.group(1).split(",")) if union else revealed


def test_mypy_sees_typed_model_options_on_both_adapters(tmp_path: Path) -> None:
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE + "\n")
    # the project's configuration (strict) and cache: warm after `make lint`, ~2 minutes cold on 2 cores
    env = {**os.environ, "MYPYPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT)])}
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache")]
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *config, str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=500,
    )
    revealed = [_plain(t) for t in _REVEALED.findall(proc.stdout)]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modes = "Literal['raise'] | Literal['truncate'] | Literal['mean']"
    want = ["bool", "int | None", modes, "float | None"]
    assert revealed == want * 2, proc.stdout
