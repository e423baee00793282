"""The adapters' model options are ``ModelConfig``'s: written out as explicit pydantic fields (so type checkers see
them), they must match the dataclass name for name, type for type and default for default, and be described by the
documentation each ``ModelConfig`` field declares. Adding an option to ``ModelConfig`` without its adapter line (or
changing one side only) fails here."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from embellama import ConfigurationError, ModelConfig
from embellama.config import option_docs
from embellama_integrations._options import ADAPTER_DEFAULTS, MODEL_OPTION_NAMES, ModelOptionFields

CORE = [f for f in dataclasses.fields(ModelConfig) if f.name not in ("model_path", "model_name")]
"""The model options: every ``ModelConfig`` field but the file and the name, which each adapter declares itself."""
HINTS = typing.get_type_hints(ModelConfig)


def _adapters() -> list[type[BaseModel]]:
    from embellama_integrations.langchain import EmbellamaEmbeddings, EmbellamaReranker
    from embellama_integrations.llama_index import EmbellamaEmbedding, EmbellamaRerank

    return [ModelOptionFields, EmbellamaEmbeddings, EmbellamaReranker, EmbellamaEmbedding, EmbellamaRerank]


def _allows_none(annotation: Any) -> bool:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(annotation)


def test_the_adapters_differ_from_the_core_only_in_long_text_mode() -> None:
    assert ADAPTER_DEFAULTS == {"long_text_mode": "truncate"}  # documented in docs/langchain.md, docs/llamaindex.md
    assert tuple(f.name for f in CORE) == MODEL_OPTION_NAMES


@pytest.mark.parametrize("cls", _adapters(), ids=lambda cls: cls.__name__)
def test_adapter_fields_are_the_model_config_fields(cls: type[BaseModel]) -> None:
    fields = cls.model_fields
    assert [name for name in fields if name in MODEL_OPTION_NAMES] == list(MODEL_OPTION_NAMES)
    docs = option_docs()
    for core in CORE:
        field = fields[core.name]
        hint = HINTS[core.name]
        if core.default is None and not _allows_none(hint):  # computed by ModelConfig when left None
            assert field.annotation == hint | None, core.name
        else:
            assert field.annotation == hint, core.name
        assert field.default == ADAPTER_DEFAULTS.get(core.name, core.default), core.name
        assert field.description == docs[core.name], core.name


def test_every_adapter_default_is_a_valid_model_config() -> None:
    defaults = {name: f.default for name, f in ModelOptionFields.model_fields.items() if f.default is not None}
    config = ModelConfig(model_path="m.gguf", **defaults)
    assert config.long_text_mode == "truncate" and config.normalize is True


@pytest.mark.parametrize("cls", _adapters()[1:], ids=lambda cls: cls.__name__)
def test_truncate_is_refused_naming_long_text_mode(cls: type[BaseModel]) -> None:
    with pytest.raises(ConfigurationError, match=r"does not take 'truncate'.*long_text_mode='truncate'"):
        cls(model_path="m.gguf", truncate=True)
