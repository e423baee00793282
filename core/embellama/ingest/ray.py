"""Embed a Ray Data dataset with embellama: an actor pool where each actor owns one engine and model.

Ray Data schedules; embellama only embeds. :class:`EmbedBatch` is the callable class
``Dataset.map_batches`` runs in each actor (batches are Arrow tables; the vectors come back as a fixed-size-list
column, every other column kept with its row); :func:`embed_dataset` sets up the actor pool. Works on a local
cluster (``ray.init()``) and on an existing one (``ray.init(address=...)``) alike. Every node embeds with the
driver's model file: :func:`embed_dataset` checks it in the driver and on every node before any actor starts, each
actor checks it again (path, size, fingerprint) and fails naming its node, and ``ship_model=True`` copies it to
nodes that lack it (see :mod:`embellama.ingest.model_files`).

Each actor sizes llama.cpp's threads to the CPUs Ray gave it (one model instance per CPU, one thread each, as the
local engine does per core), so several actors on a node never oversubscribe its cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embellama.engine.client import EmbeddingClient
from embellama.engine.engine import EmbeddingEngine
from embellama.engine.planning import OnError
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.ingest.columns import error_column_name
from embellama.ingest.model_files import ModelFile, check_nodes, driver_model_file, local_model_path, ship
from embellama.ingest.workers import resolve_model_path, thread_options

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "EmbedBatch",
    "actor_cpus",
    "embed_dataset",
    "error_column_name",
    "pool_layout",
    "prepare_model",
    "resolve_model_path",
]


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


_thread_options = thread_options  # the name this module had for it


def prepare_model(path: str | Path, *, ship_model: bool = False) -> ModelFile:
    """The driver's model file, checked here and (when Ray is running) on every node now; shipped into the object
    store first with ``ship_model``.

    Raises:
        ModelNotFoundError: the file is missing here, or on a node (without ``ship_model``).
        ModelLoadError: it is not a GGUF file.
        ConfigurationError: a node holds a different file at the path.
    """
    import ray

    model = driver_model_file(path)
    if ray.is_initialized():  # else Ray Data starts a local cluster: this machine, this file
        if ship_model:
            model = ship(model)
        check_nodes(model)
    return model


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
        model_file: The driver's model file (:func:`~embellama.ingest.model_files.driver_model_file`): the
            actor loads the file on its node with the same size and fingerprint (or the shipped copy), and fails
            naming its node if there is none. Replaces ``model_path``. Defaults to none (``model_path`` unchecked).
        text_column: Column holding the texts. Defaults to ``"text"``.
        output_column: Column to add with the vectors (fixed-size lists of float32). Defaults to ``"embedding"``.
        id_column: Column that identifies a row; errors name it. Defaults to none (errors name the text).
        on_error: ``"raise"`` (default): a bad row (not a string, too long with ``long_text_mode="raise"``) fails the
            job, naming it. ``"collect"``: the row is kept with a null vector and its error in
            ``<output_column>_error``.
        document_instruction: Prefix for every text. Defaults to the model family's document prompt, if any.
        cpus: CPUs this actor may use (its llama.cpp threads follow). Defaults to what Ray assigned it; outside
            Ray, the engine's defaults.
        **model_options: Any :class:`~embellama.config.ModelConfig` option, as for local use.

    Raises:
        ConfigurationError: an option is invalid, or (with ``model_file``) this node's file differs from the
            driver's.
        ModelNotFoundError: (with ``model_file``) this node lacks the file and it is not shipped.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_file: ModelFile | None = None,
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
        options = {**thread_options(cpus or actor_cpus(), model_options), **model_options}
        if model_file is not None:
            model_path = local_model_path(model_file)  # before loading: a wrong file never embeds a row
        self.client = EmbeddingClient(
            model_path,
            engine=EmbeddingEngine(cache_size=0),  # a corpus is embedded once; a cache would only hold memory
            document_instruction=document_instruction,
            on_error=on_error,
            **options,
        )
        self._engine, self._name = self.client.ensure_loaded()
        if model_file is not None and self.client.info.fingerprint != model_file.fingerprint:  # replaced meanwhile
            raise ConfigurationError(
                f"{model_path} changed while loading: fingerprint {self.client.info.fingerprint} vs the driver's "
                f"{model_file.fingerprint}"
            )
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
    ship_model: bool = False,
    **model_options: Any,
) -> ray.data.Dataset:
    """Add a vector column to ``ds``, embedding ``text_column`` on a pool of Ray actors (lazy, like any Ray Data
    transform: nothing runs until the dataset is consumed).

    Every other column (ids, metadata) stays with its row; rows may come back in another order (Ray Data does not
    keep it), so carry an id column to join on.

    Args:
        ds: The dataset.
        model_path: GGUF file. Defaults to the default model (built here first). It is checked here (missing: a
            ``ModelNotFoundError`` at once) and on every node before any actor starts: each node must hold the same
            file (size and fingerprint) at this path, or get it shipped.
        text_column: Column holding the texts. Defaults to ``"text"``.
        output_column: Column to add with the vectors. Defaults to ``"embedding"``.
        id_column: Column that identifies a row; errors name it. Defaults to none.
        num_actors: Actors in the pool. Defaults to the cluster's CPUs less one (kept for Ray Data's read and write
            tasks) divided by ``cpus_per_actor``, at least 1 (see :func:`pool_layout`).
        cpus_per_actor: CPUs each actor reserves (its llama.cpp threads follow). Defaults to 1.
        batch_size: Rows per batch handed to an actor. Defaults to 256.
        on_error: ``"raise"`` or ``"collect"`` (see :class:`EmbedBatch`). Defaults to ``"raise"``.
        document_instruction: Prefix for every text. Defaults to the model family's document prompt, if any.
        ship_model: Copy the model through Ray's object store to nodes that lack it (once per node, into
            ``$EMBELLAMA_CACHE/shipped``). Defaults to False (such a node fails the job, named).
        **model_options: Any :class:`~embellama.config.ModelConfig` option, as for local use.

    Raises:
        ConfigurationError: an option is invalid, or a node holds a different file at ``model_path`` (checked
            here, before any actor starts; the message names the node).
        ModelNotFoundError: the model file does not exist here, or a node lacks it and ``ship_model`` is False.
        ModelLoadError: the model file is not a GGUF file.
    """
    import ray

    _check_columns(text_column=text_column, output_column=output_column, id_column=id_column)
    for name, value in (("num_actors", num_actors), ("cpus_per_actor", cpus_per_actor), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    # validate every option here (unknown names included; no file is read)
    EmbeddingClient(model_path, document_instruction=document_instruction, on_error=on_error, **model_options)
    if not isinstance(ship_model, bool):
        raise ConfigurationError(f"ship_model must be a bool, got {ship_model!r}")
    model = prepare_model(resolve_model_path(model_path), ship_model=ship_model)
    num_actors, reserved = pool_layout(num_actors, cpus_per_actor)
    num_gpus = 1 if model_options.get("n_gpu_layers") else 0
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "model_file": model,
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
