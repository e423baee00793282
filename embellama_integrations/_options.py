"""The model options both adapters expose, derived from :class:`embellama.ModelConfig` (declared once, there).

:data:`ModelOptionFields` is a pydantic model with one optional field per :data:`embellama.config.MODEL_OPTIONS`
entry, typed and documented from ``ModelConfig`` itself; each adapter inherits it, so an option added to the core
reaches LangChain and LlamaIndex users with no change here. :func:`client_options` turns an adapter's field
values into :class:`embellama.engine.client.EmbeddingClient` keyword arguments (only those the user set).
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, create_model

from embellama.config import MODEL_OPTIONS, ModelConfig, option_docs
from embellama.engine.client import EmbeddingClient
from embellama.migration import unknown_options_error

__all__ = [
    "MODEL_OPTION_NAMES",
    "ClientOptionFields",
    "ModelOptionFields",
    "model_option_values",
    "refuse_unknown",
    "resolved_identity",
]

MODEL_OPTION_NAMES: tuple[str, ...] = tuple(MODEL_OPTIONS)


ADAPTER_DEFAULTS: dict[str, Any] = {"truncate": True}
"""Where the adapters' defaults differ from ``ModelConfig``'s: framework splitters count tokens with another
tokenizer and add metadata, so over-long chunks are normal there. They are cut as sentence-transformers and
Hugging Face adapters do — never silently: each call that cuts texts logs one warning with the count (set
``truncate=False`` for strict mode, which checks every text before embedding any)."""


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    docs = option_docs()
    fields: dict[str, Any] = {}
    for name, core_default in MODEL_OPTIONS.items():
        default = ADAPTER_DEFAULTS.get(name, core_default)
        annotation = hints[name]
        if default is None:
            annotation = annotation | None
        fields[name] = (annotation, Field(default=default, description=docs.get(name, name)))
    return fields


if TYPE_CHECKING:

    class ModelOptionFields(BaseModel):
        """Every embellama model option (fields made from ``embellama.ModelConfig`` at import)."""

else:
    ModelOptionFields = create_model("ModelOptionFields", __base__=BaseModel, **_fields())
    ModelOptionFields.__doc__ = "Every embellama model option (see ``embellama.ModelConfig``)."


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
