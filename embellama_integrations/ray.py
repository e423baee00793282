"""Embed a Ray Data dataset with embellama: an actor pool where each actor owns one engine and model.

Ray Data schedules; embellama only embeds. :class:`EmbedBatch` is the callable class
``Dataset.map_batches`` runs in each actor (batches are Arrow tables; the vectors come back as a fixed-size-list
column, every other column kept with its row); :func:`embed_dataset` sets up the actor pool. Works on a local
cluster (``ray.init()``) and on an existing one (``ray.init(address=...)``) alike — the GGUF file must then be at
the same path on every node.

Each actor sizes llama.cpp's threads to the CPUs Ray gave it (one model instance per CPU, one thread each, as the
local engine does per core), so several actors on a node never oversubscribe its cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embellama.client import EmbeddingClient, model_path_from_env
from embellama.default_model import default_model_path
from embellama.engine import EmbeddingEngine
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.planning import OnError

if TYPE_CHECKING:
    import ray.data

__all__ = ["EmbedBatch", "actor_cpus", "embed_dataset", "error_column_name", "pool_layout", "resolve_model_path"]


def actor_cpus() -> int | None:
    """The whole CPUs Ray assigned to the calling actor or task (at least 1), or ``None`` outside a Ray worker."""
    try:
        import ray
    except ImportError:  # pragma: no cover - EmbedBatch used without Ray installed
        return None
    if not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")  # type: ignore[no-untyped-call]
    except AssertionError:  # the driver: Ray assigns resources to workers only
        return None
    return None if cpus is None else max(1, int(cpus))


def _thread_options(cpus: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """``n_workers``/``n_threads`` for an actor with ``cpus`` CPUs, unless the user chose them (or outside Ray:
    the engine's own defaults)."""
    if cpus is None or "n_workers" in options or "n_threads" in options:
        return {}
    if options.get("n_gpu_layers"):
        return {"n_workers": 1, "n_threads": cpus}
    return {"n_workers": cpus, "n_threads": 1}


def error_column_name(output_column: str) -> str:
    """The column that holds each row's error with ``on_error="collect"`` (``None`` where the row embedded)."""
    return f"{output_column}_error"


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The GGUF to send to the actors: ``model_path``, else ``$EMBELLAMA_MODEL_PATH``, else the default model
    (built here, once, rather than by each actor)."""
    if model_path is not None:
        return Path(model_path)
    from_env = model_path_from_env()
    return Path(from_env) if from_env else default_model_path()


def _check_columns(**names: str | None) -> None:
    for what, value in names.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{what} must be a non-empty column name, got {value!r}")


class EmbedBatch:
    """Embed one Arrow batch of a Ray dataset: the callable class for ``Dataset.map_batches``.

    Ray constructs it once per actor: the actor loads the model then (into its own engine, threads sized to its
    CPUs) and keeps it for every batch it is given.

    Args:
        model_path: GGUF file, at the same path on every node. Defaults to the default model.
        text_column: Column holding the texts. Defaults to ``"text"``.
        output_column: Column to add with the vectors (fixed-size lists of float32). Defaults to ``"embedding"``.
        id_column: Column that identifies a row; errors name it. Defaults to none (errors name the text).
        on_error: ``"raise"`` (default): a bad row (not a string, too long with ``truncate=False``) fails the
            job, naming it. ``"collect"``: the row is kept with a null vector and its error in
            ``<output_column>_error``.
        document_instruction: Prefix for every text. Defaults to the model family's document prompt, if any.
        cpus: CPUs this actor may use (its llama.cpp threads follow). Defaults to what Ray assigned it; outside
            Ray, the engine's defaults.
        **model_options: Any :class:`~embellama.config.ModelConfig` option, as for local use.

    Raises:
        ConfigurationError: an option is invalid.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        id_column: str | None = None,
        on_error: OnError = "raise",
        document_instruction: str | None = None,
        cpus: int | None = None,
        **model_options: Any,
    ) -> None:
        _check_columns(text_column=text_column, output_column=output_column, id_column=id_column)
        self.text_column = text_column
        self.output_column = output_column
        self.id_column = id_column
        options = {**_thread_options(cpus or actor_cpus(), model_options), **model_options}
        self.client = EmbeddingClient(
            model_path,
            engine=EmbeddingEngine(cache_size=0),  # a corpus is embedded once; a cache would only hold memory
            document_instruction=document_instruction,
            on_error=on_error,
            **options,
        )
        self._engine, self._name = self.client.ensure_loaded()
        self.dimensions = self.client.info.dimensions

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Return ``batch`` with the vector column (and, collecting errors, the error column) added."""
        if self.text_column not in batch.column_names:
            raise ConfigurationError(
                f"text column {self.text_column!r} not in the dataset; its columns are {batch.column_names}"
            )
        texts = batch.column(self.text_column).to_pylist()
        result = self._engine.embed_batch(
            self._name, texts, output="numpy", on_error="collect", prompt=self.client.role_prompt("document")
        )
        errors = {index: self._name_row(batch, index, error) for index, error in result.errors.items()}
        if errors and self.client.on_error == "raise":
            first = min(errors)
            raise InvalidInputError(errors[first]) from result.errors[first]
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, vector in enumerate(result.embeddings):
            if vector is not None:
                vectors[i] = vector
        mask = pa.array([i in errors for i in range(len(texts))]) if errors else None
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dimensions, mask=mask)
        batch = batch.append_column(self.output_column, column)
        if self.client.on_error == "collect":
            batch = batch.append_column(
                error_column_name(self.output_column),
                pa.array([errors.get(i) for i in range(len(texts))], type=pa.string()),
            )
        return batch

    def _name_row(self, batch: pa.Table, index: int, error: InvalidInputError) -> str:
        if self.id_column is not None and self.id_column in batch.column_names:
            where = f"row {self.id_column}={batch.column(self.id_column)[index].as_py()!r}"
        else:
            where = "row " + (f"starting {error.preview!r}" if error.preview else "(no text)")
        return f"{where}, column {self.text_column!r}: {error.reason}"


def pool_layout(num_actors: int | None, cpus_per_actor: int) -> tuple[int, float]:
    """The actor pool :func:`embed_dataset` starts: ``(actors, CPUs each reserves)``. Ray must be initialised.

    An actor pool holds its CPUs for the whole job, so a pool sized to every CPU of the cluster leaves none for
    Ray Data's read tasks (``read_json``, ``read_parquet``), and the job never starts reading. By default one CPU
    stays free: ``(cluster CPUs - 1) // cpus_per_actor`` actors (at least one). On a cluster too small for that
    (``cpus_per_actor`` CPUs or fewer) the single actor reserves only what leaves one CPU free (none on a 1-CPU
    cluster); its llama.cpp threads still follow ``cpus_per_actor``. A given ``num_actors`` is taken as asked, each
    actor reserving ``cpus_per_actor``.
    """
    import ray

    if num_actors is not None:
        return num_actors, float(cpus_per_actor)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    actors = max(1, (cluster_cpus - 1) // cpus_per_actor)
    return actors, float(min(cpus_per_actor, max(0, cluster_cpus - 1)))


def embed_dataset(
    ds: ray.data.Dataset,
    *,
    model_path: str | Path | None = None,
    text_column: str = "text",
    output_column: str = "embedding",
    id_column: str | None = None,
    num_actors: int | None = None,
    cpus_per_actor: int = 1,
    batch_size: int = 256,
    on_error: OnError = "raise",
    document_instruction: str | None = None,
    **model_options: Any,
) -> ray.data.Dataset:
    """Add a vector column to ``ds``, embedding ``text_column`` on a pool of Ray actors (lazy, like any Ray Data
    transform: nothing runs until the dataset is consumed).

    Every other column (ids, metadata) stays with its row; rows may come back in another order (Ray Data does not
    keep it), so carry an id column to join on.

    Args:
        ds: The dataset.
        model_path: GGUF file, at the same path on every node. Defaults to the default model (built here first).
        text_column: Column holding the texts. Defaults to ``"text"``.
        output_column: Column to add with the vectors. Defaults to ``"embedding"``.
        id_column: Column that identifies a row; errors name it. Defaults to none.
        num_actors: Actors in the pool. Defaults to the cluster's CPUs less one (kept for Ray Data's read and write
            tasks) divided by ``cpus_per_actor``, at least 1 (see :func:`pool_layout`).
        cpus_per_actor: CPUs each actor reserves (its llama.cpp threads follow). Defaults to 1.
        batch_size: Rows per batch handed to an actor. Defaults to 256.
        on_error: ``"raise"`` or ``"collect"`` (see :class:`EmbedBatch`). Defaults to ``"raise"``.
        document_instruction: Prefix for every text. Defaults to the model family's document prompt, if any.
        **model_options: Any :class:`~embellama.config.ModelConfig` option, as for local use.

    Raises:
        ConfigurationError: an option is invalid (checked here, before any actor starts).
    """
    import ray

    _check_columns(text_column=text_column, output_column=output_column, id_column=id_column)
    for name, value in (("num_actors", num_actors), ("cpus_per_actor", cpus_per_actor), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    # validate every option here (unknown names included; no file is read)
    EmbeddingClient(model_path, document_instruction=document_instruction, on_error=on_error, **model_options)
    path = resolve_model_path(model_path)
    num_actors, reserved = pool_layout(num_actors, cpus_per_actor)
    num_gpus = 1 if model_options.get("n_gpu_layers") else 0
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "model_path": str(path),
            "text_column": text_column,
            "output_column": output_column,
            "id_column": id_column,
            "on_error": on_error,
            "document_instruction": document_instruction,
            "cpus": cpus_per_actor,
            **model_options,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=reserved,
        num_gpus=num_gpus,
    )
