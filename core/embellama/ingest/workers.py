"""Embedding inside a data engine's worker processes (Ray, Daft, Spark, Dask): what every engine adapter shares.

- :func:`thread_options`: llama.cpp's ``n_workers``/``n_threads`` for a worker given ``cpus`` CPUs by its engine
  (one model instance per CPU, one thread each, as the local engine does per core), so several workers on a machine
  never take one instance per machine core each.
- :func:`process_client`: one loaded model per worker process, whatever the number of UDF instances or batches
  using it (a module-level cache keyed by the file's fingerprint and the options).
- :func:`embedding_dimensions`: the width of the vectors a model gives, read from the GGUF header only (no weights
  loaded), for an output schema declared before anything runs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from embellama.config import MODEL_OPTIONS
from embellama.engine.client import EmbeddingClient, model_path_from_env
from embellama.engine.engine import EmbeddingEngine
from embellama.engine.planning import OnError
from embellama.errors import ConfigurationError, ModelLoadError
from embellama.files.default_model import default_model_path
from embellama.files.gguf import check_model_file, read_header
from embellama.files.identity import file_fingerprint
from embellama.migration import unknown_options_error

__all__ = ["embedding_dimensions", "process_client", "process_engine", "resolve_model_path", "thread_options"]


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The GGUF to embed with: ``model_path``, else ``$EMBELLAMA_MODEL_PATH``, else the default model (built here,
    once, rather than by each worker)."""
    if model_path is not None:
        return Path(model_path)
    from_env = model_path_from_env()
    return Path(from_env) if from_env else default_model_path()


def thread_options(cpus: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """``n_workers``/``n_threads`` for a worker with ``cpus`` CPUs, unless the user chose them (or ``cpus`` is
    ``None``: the engine's own defaults)."""
    if cpus is None or "n_workers" in options or "n_threads" in options:
        return {}
    if options.get("n_gpu_layers"):
        return {"n_workers": 1, "n_threads": cpus}
    return {"n_workers": cpus, "n_threads": 1}


def embedding_dimensions(model_path: str | Path | None = None, *, dimensions: int | None = None) -> int:
    """The length of the vectors ``model_path`` gives, from its GGUF header (no weights are loaded).

    Args:
        model_path: GGUF file. Defaults to ``$EMBELLAMA_MODEL_PATH``, else the default model (built if needed).
        dimensions: The ``dimensions=`` option (Matryoshka truncation) the model will be used with: returned
            when valid. Defaults to none (the model's full width).

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelLoadError: it is not a GGUF file, or its header records no embedding length.
        ConfigurationError: ``dimensions`` is not a positive integer, or exceeds the model's width.
    """
    path = resolve_model_path(model_path)
    width = read_header(path).arch_value("embedding_length")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelLoadError(f"{path} records no embedding length ({read_header(path).architecture}.embedding_length)")
    if dimensions is None:
        return width
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise ConfigurationError(f"dimensions must be an integer >= 1, got {dimensions!r}")
    if dimensions > width:
        raise ConfigurationError(f"dimensions={dimensions} exceeds the model's {width} dimensions ({path})")
    return dimensions


_engine: EmbeddingEngine | None = None
_clients: dict[tuple[Any, ...], EmbeddingClient] = {}
_lock = threading.Lock()


def process_engine() -> EmbeddingEngine:
    """This process's engine for corpus embedding (no vector cache: a corpus is embedded once); created on first
    use, again if it was closed."""
    global _engine
    with _lock:
        if _engine is None or _engine.is_closed:
            _engine = EmbeddingEngine(cache_size=0)
            _clients.clear()
        return _engine


def process_client(
    model_path: str | Path | None = None,
    *,
    cpus: int | None = None,
    document_instruction: str | None = None,
    on_error: OnError = "raise",
    **model_options: Any,
) -> EmbeddingClient:
    """The loaded client for this model and options in this process: made (and the model loaded, threads sized to
    ``cpus``) on the first call, the same object on every later one.

    Args:
        model_path: GGUF file. Defaults to ``$EMBELLAMA_MODEL_PATH``, else the default model.
        cpus: CPUs the engine gave this worker; llama.cpp's threads follow (:func:`thread_options`). Defaults to
            the engine's own sizing (every usable core).
        document_instruction: Prefix for every document. Defaults to the model family's document prompt, if any.
        on_error: ``"raise"`` or ``"collect"`` (see :class:`~embellama.engine.client.EmbeddingClient`).
            Defaults to ``"raise"``.
        **model_options: Any :class:`~embellama.config.ModelConfig` option.

    Raises:
        ConfigurationError: an option is invalid.
        ModelNotFoundError: the file does not exist.
        ModelLoadError: the file cannot be loaded.
    """
    unknown = sorted(set(model_options) - set(MODEL_OPTIONS))
    if unknown:
        raise unknown_options_error({k: model_options[k] for k in unknown}, MODEL_OPTIONS, where="process_client")
    path = resolve_model_path(model_path)
    check_model_file(path)
    options = {**thread_options(cpus, model_options), **model_options}
    key = (
        str(path.absolute()),
        file_fingerprint(path),
        document_instruction,
        on_error,
        tuple(sorted((k, repr(v)) for k, v in options.items())),
    )
    engine = process_engine()
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = EmbeddingClient(
                path, engine=engine, document_instruction=document_instruction, on_error=on_error, **options
            )
            client.ensure_loaded()
            _clients[key] = client
    return client
