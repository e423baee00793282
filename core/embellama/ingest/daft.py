"""Embed a Daft DataFrame with embellama: a class UDF sized to the CPUs Daft gives it, one model per process.

::

    import daft
    from embellama.ingest.daft import embedder

    embed = embedder("/models/e5.gguf", concurrency=2)       # 2 UDF processes, each with half the cores
    df = daft.read_parquet("corpus/*.parquet")
    df = df.with_column("vector", embed(df["text"]))
    df.write_lance("/data/lancedb/documents.lance")         # a LanceDB table: lancedb.connect("/data/lancedb")

:func:`embedder` declares the output type up front (fixed-size lists of float32 whose length
:func:`~embellama.ingest.workers.embedding_dimensions` reads from the GGUF header), checks the model file in
the driver (missing: an error here, at once), and returns a ``@daft.cls`` instance. Each UDF instance runs in its
own process (``use_process=True``) and sizes llama.cpp to the CPUs it was given — on Daft's Ray runner what Ray
assigned its actor, else the ``cpus`` Daft reserves for it (the usable cores divided by ``concurrency``) — so
``concurrency`` processes never take one model instance per machine core each. The model is loaded once per
process (:func:`~embellama.ingest.workers.process_client`) and reused by every batch and every instance there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embellama.cpu import usable_cores
from embellama.engine.client import EmbeddingClient
from embellama.engine.planning import OnError
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.ingest.model_files import ModelFile, driver_model_file, local_model_path
from embellama.ingest.ray import actor_cpus
from embellama.ingest.workers import embedding_dimensions, process_client, resolve_model_path

__all__ = ["DaftEmbedder", "embedder", "embedding_dimensions", "udf_sizing"]


def udf_sizing(concurrency: int | None, cpus: int | None, *, usable: int | None = None) -> tuple[int, int]:
    """``(instances, cpus per instance)`` for the UDF on a machine with ``usable`` cores (this process's).

    Neither given: one instance with every core. ``concurrency`` only: the cores shared among the instances.
    ``cpus`` only: as many instances as fit. Both: as given.

    Raises:
        ConfigurationError: ``concurrency`` or ``cpus`` is not an integer >= 1.
    """
    for name, value in (("concurrency", concurrency), ("cpus", cpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    cores = usable or usable_cores()
    if concurrency is None and cpus is None:
        return 1, cores
    if cpus is None:
        assert concurrency is not None
        return concurrency, max(1, cores // concurrency)
    if concurrency is None:
        return max(1, cores // cpus), cpus
    return concurrency, cpus


class DaftEmbedder:
    """The state of one UDF instance: this process's client for the driver's model (see :func:`embedder`, which
    wraps a subclass with ``@daft.cls``; not used directly).

    Args:
        model: The driver's model file; this process loads the file with the same fingerprint.
        cpus: CPUs Daft reserves for this instance (used unless Ray assigned the actor its own).
        dimensions: Length of the vectors (the declared output type).
        document_instruction: Prefix for every text. Defaults to the model family's document prompt.
        on_error: ``"raise"``: a bad row fails the query. ``"collect"``: it gets a null vector.
        model_options: :class:`~embellama.config.ModelConfig` options.
    """

    def __init__(
        self,
        model: ModelFile,
        cpus: int | None,
        dimensions: int,
        document_instruction: str | None,
        on_error: OnError,
        model_options: dict[str, Any],
    ) -> None:
        self.cpus = actor_cpus() or cpus
        self.client = process_client(
            local_model_path(model),
            cpus=self.cpus,
            document_instruction=document_instruction,
            on_error=on_error,
            **model_options,
        )
        self.dimensions = dimensions
        if self.client.info.fingerprint != model.fingerprint or self.client.info.dimensions != dimensions:
            raise ConfigurationError(
                f"{model.path} changed since the query was planned: fingerprint {self.client.info.fingerprint}, "
                f"{self.client.info.dimensions} dimensions vs the driver's {model.fingerprint}, {dimensions}"
            )

    def embed(self, texts: Any) -> pa.Array:
        """Vectors for a batch of texts (a ``daft.Series``, an Arrow array or a list) as fixed-size float32 lists."""
        if hasattr(texts, "to_pylist"):
            texts = texts.to_pylist()
        engine, name = self.client.ensure_loaded()
        result = engine.embed_batch(
            name, list(texts), output="numpy", on_error="collect", prompt=self.client.role_prompt("document")
        )
        if result.errors and self.client.on_error == "raise":
            first = min(result.errors)
            raise InvalidInputError(f"row {first} of the batch: {result.errors[first].reason}") from result.errors[
                first
            ]
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, vector in enumerate(result.embeddings):
            if vector is not None:
                vectors[i] = vector
        mask = pa.array([i in result.errors for i in range(len(texts))]) if result.errors else None
        return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dimensions, mask=mask)


def embedder(
    model_path: str | Path | None = None,
    *,
    concurrency: int | None = None,
    cpus: int | None = None,
    batch_size: int = 256,
    document_instruction: str | None = None,
    on_error: OnError = "raise",
    **model_options: Any,
) -> Any:
    """A Daft class-UDF instance that embeds a text column: ``embed = embedder(...); embed(df["text"])``.

    Args:
        model_path: GGUF file (the same file on every node of a Daft-on-Ray cluster: each process checks its
            fingerprint). Defaults to ``$EMBELLAMA_MODEL_PATH``, else the default model (built here first).
        concurrency: UDF instances (processes) Daft runs. Defaults to the usable cores divided by ``cpus``, or 1.
        cpus: CPUs each instance reserves; its llama.cpp threads follow. Defaults to the usable cores divided by
            ``concurrency`` (every core for one instance).
        batch_size: Rows per UDF call. Defaults to 256.
        document_instruction: Prefix for every text. Defaults to the model family's document prompt, if any.
        on_error: ``"raise"`` (default): a bad row fails the query, naming its place in the batch. ``"collect"``:
            the row gets a null vector.
        **model_options: Any :class:`~embellama.config.ModelConfig` option (``dimensions=`` narrows the declared
            output type too).

    Raises:
        ConfigurationError: an option is invalid.
        ModelNotFoundError: the model file does not exist (raised here, before Daft runs anything).
        ModelLoadError: it is not a GGUF file.
    """
    import daft

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    instances, per_instance = udf_sizing(concurrency, cpus)
    path = resolve_model_path(model_path)
    EmbeddingClient(path, document_instruction=document_instruction, on_error=on_error, **model_options)
    model = driver_model_file(path)
    dimensions = embedding_dimensions(path, dimensions=model_options.get("dimensions"))
    dtype = daft.DataType.fixed_size_list(daft.DataType.float32(), dimensions)

    class Embed(DaftEmbedder):
        @daft.method.batch(return_dtype=dtype, batch_size=batch_size)
        def __call__(self, texts: Any) -> pa.Array:
            return self.embed(texts)

    udf = daft.cls(Embed, cpus=per_instance, max_concurrency=instances, use_process=True)
    return udf(model, per_instance, dimensions, document_instruction, on_error, dict(model_options))
