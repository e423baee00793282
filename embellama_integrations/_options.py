"""The model options both adapters expose: :class:`ModelOptionFields`, one explicit, typed pydantic field per
:class:`embellama.ModelConfig` option (besides the file and the name), each described by the documentation the
``ModelConfig`` field declares (``metadata["doc"]``, read by :func:`embellama.config.option_docs`).

The fields are written out so that type checkers and IDEs see them (``EmbellamaEmbeddings(...).normalize`` is a
``bool``); ``tests/unit/test_adapter_options.py`` checks they match ``ModelConfig`` name for name, type for type and
default for default. Adding a ``ModelConfig`` option is adding its line here. :func:`model_option_values` turns an
adapter's field values into :class:`embellama.engine.client.EmbeddingClient` keyword arguments (only those the
user set, and the adapters' own defaults).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from embellama.config import Isolation, LongTextMode, Normalization, Pooling, option_docs
from embellama.engine.client import EmbeddingClient
from embellama.migration import unknown_options_error

__all__ = [
    "ADAPTER_DEFAULTS",
    "MODEL_OPTION_NAMES",
    "ClientOptionFields",
    "ModelOptionFields",
    "model_option_values",
    "refuse_unknown",
    "resolved_identity",
]

ADAPTER_DEFAULTS: dict[str, Any] = {"long_text_mode": "truncate"}
"""Where the adapters' defaults differ from ``ModelConfig``'s: framework splitters count tokens with another
tokenizer and add metadata, so over-long chunks are normal there. They are cut as sentence-transformers and
Hugging Face adapters do — never silently: each call that cuts texts logs one warning with the count (set
``long_text_mode="raise"`` for strict mode, which checks every text before embedding any)."""

_DOCS = option_docs()


class ModelOptionFields(BaseModel):
    """Every embellama model option as a field: ``ModelConfig``'s name, type, default (``None`` where the core
    computes it; ``long_text_mode`` defaults to ``"truncate"`` here, see :data:`ADAPTER_DEFAULTS`) and
    documentation."""

    pooling: Pooling | str = Field(default=Pooling.MODEL, description=_DOCS["pooling"])
    normalize: bool = Field(default=True, description=_DOCS["normalize"])
    normalization: Normalization = Field(default="l2", description=_DOCS["normalization"])
    norm_p: float = Field(default=2.0, description=_DOCS["norm_p"])
    dimensions: int | None = Field(default=None, description=_DOCS["dimensions"])
    max_tokens: int | None = Field(default=None, description=_DOCS["max_tokens"])
    batch_tokens: int | None = Field(default=None, description=_DOCS["batch_tokens"])
    max_texts_per_decode: int | None = Field(default=None, description=_DOCS["max_texts_per_decode"])
    n_threads: int | None = Field(default=None, description=_DOCS["n_threads"])
    n_workers: int | None = Field(default=None, description=_DOCS["n_workers"])
    n_gpu_layers: int = Field(default=0, description=_DOCS["n_gpu_layers"])
    use_mmap: bool = Field(default=True, description=_DOCS["use_mmap"])
    flash_attn: bool = Field(default=True, description=_DOCS["flash_attn"])
    isolation: Isolation = Field(default="thread", description=_DOCS["isolation"])
    crash_retries: int = Field(default=0, description=_DOCS["crash_retries"])
    request_timeout: float | None = Field(default=300.0, description=_DOCS["request_timeout"])
    long_text_mode: LongTextMode = Field(default="truncate", description=_DOCS["long_text_mode"])
    prompts: dict[str, str] | None = Field(default=None, description=_DOCS["prompts"])
    add_eos: bool | None = Field(default=None, description=_DOCS["add_eos"])
    verbose: bool = Field(default=False, description=_DOCS["verbose"])


MODEL_OPTION_NAMES: tuple[str, ...] = tuple(ModelOptionFields.model_fields)
"""The names of the model options, in ``ModelConfig``'s order."""


class ClientOptionFields(BaseModel):
    """Options of :class:`embellama.engine.client.EmbeddingClient` that both adapters expose under the same name."""

    show_progress: bool = Field(default=False, description="Show a tqdm progress bar per call (extra 'progress').")
    on_error: Literal["raise", "collect"] = Field(
        default="raise",
        description="'raise': a bad text fails the call, naming its index. 'collect': valid texts get vectors and "
        "each bad one None (errors in client.last_errors, and logged).",
    )


def refuse_unknown(cls: type[BaseModel], data: dict[str, Any], *, also: tuple[str, ...] = ()) -> None:
    """Raise :class:`embellama.ConfigurationError` for keywords ``cls`` does not take, naming the embellama
    equivalent of other libraries' keywords (``device``, ``max_length``, ``model_kwargs``, ...), where pydantic
    would only say "Extra inputs are not permitted". ``also``: keywords the constructor takes besides the fields."""
    unknown = {k: v for k, v in data.items() if k not in cls.model_fields and k not in also}
    if unknown:
        raise unknown_options_error(unknown, (*cls.model_fields, *also), where=cls.__name__)


def model_option_values(obj: Any, *, by_name: bool) -> dict[str, Any]:
    """An adapter's options for :class:`embellama.engine.client.EmbeddingClient`: the model options the user set, plus
    the adapters' own defaults (:data:`ADAPTER_DEFAULTS`) unless the model is one registered by name in the
    caller's engine (its options are then the engine's), and the client options."""
    values = {
        name: getattr(obj, name)
        for name in MODEL_OPTION_NAMES
        if name in obj.model_fields_set or (name in ADAPTER_DEFAULTS and not by_name)
    }
    client = {name: getattr(obj, name) for name in ("show_progress", "on_error") if hasattr(obj, name)}
    return values | client


def resolved_identity(client: EmbeddingClient) -> dict[str, Any]:
    """The model file and name a client resolved (defaults, ``$EMBELLAMA_MODEL_PATH``, a path given as
    ``model_name``), so an adapter's fields and repr show the model actually used."""
    if client.config is None:  # a model registered in the caller's engine, by name
        return {"model_name": client.model_name}
    return {"model_path": str(client.config.model_path), "model_name": client.model_name}
