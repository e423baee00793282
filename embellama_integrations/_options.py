"""The model options both adapters expose, derived from :class:`embellama.ModelConfig` (declared once, there).

:data:`ModelOptionFields` is a pydantic model with one optional field per :data:`embellama.config.MODEL_OPTIONS`
entry, typed and documented from ``ModelConfig`` itself; each adapter inherits it, so an option added to the core
reaches LangChain and LlamaIndex users with no change here. :func:`client_options` turns an adapter's field
values into :class:`embellama.client.EmbeddingClient` keyword arguments (only those the user set).
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from embellama.config import MODEL_OPTIONS, ModelConfig, option_docs

__all__ = ["MODEL_OPTION_NAMES", "ModelOptionFields", "model_option_values"]

MODEL_OPTION_NAMES: tuple[str, ...] = tuple(MODEL_OPTIONS)


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    docs = option_docs()
    fields: dict[str, Any] = {}
    for name, default in MODEL_OPTIONS.items():
        annotation = hints[name]
        if default is None:
            annotation = annotation | None
        fields[name] = (annotation, Field(default=default, description=docs.get(name, name)))
    return fields


if TYPE_CHECKING:
    ModelOptionFields = BaseModel
else:
    ModelOptionFields = create_model("ModelOptionFields", __base__=BaseModel, **_fields())
    ModelOptionFields.__doc__ = "Every embellama model option (see ``embellama.ModelConfig``)."


def model_option_values(obj: Any) -> dict[str, Any]:
    """The model options of an adapter instance, for :class:`embellama.client.EmbeddingClient`."""
    return {name: getattr(obj, name) for name in MODEL_OPTION_NAMES}
