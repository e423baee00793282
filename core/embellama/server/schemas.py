"""Request bodies: read, parsed and validated into :class:`EmbeddingsRequest` / :class:`RerankRequest`.

Every malformed field is an :class:`~embellama.server.errors.ApiError` naming it (400; 404 for an unknown model;
413 past a :class:`~embellama.server.limits.ServerLimits` field). Parsing needs of the engine only what it serves
(:class:`ServedModel` by name); the one check that tokenizes, :func:`check_tokens`, needs only a
:class:`TokenCounter`.

Size and token bounds: a ``prompt`` (or a rerank ``query``) counts once per input against ``max_body_bytes``; a
request's tokens are bounded by its UTF-8 size (no tokenizer makes more tokens than bytes, plus
:data:`SPECIAL_TOKENS` per input) and by the model's per-input limit, and only a request that bound cannot prove
under ``max_request_tokens`` is counted exactly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from embellama.errors import InvalidInputError
from embellama.server.errors import ApiError, invalid_input, invalid_request, too_large
from embellama.server.limits import ServerLimits

__all__ = [
    "SPECIAL_TOKENS",
    "EmbeddingsRequest",
    "RerankRequest",
    "ServedModel",
    "TokenCounter",
    "check_tokens",
    "parse_embeddings",
    "parse_json",
    "parse_rerank",
    "read_json",
    "token_bound",
]

SPECIAL_TOKENS = 8
"""More special tokens than any tokenizer adds around one input (so ``bytes + 8`` bounds an input's tokens)."""


class ServedModel(Protocol):
    """What parsing needs to know of a served model (a :class:`~embellama.types.ModelInfo` has it)."""

    @property
    def kind(self) -> str:
        """``"embedding"`` or ``"reranker"``."""

    @property
    def dimensions(self) -> int:
        """Vector size (the most ``dimensions`` may ask)."""

    @property
    def max_tokens(self) -> int:
        """Tokens per input the model processes."""

    @property
    def prompts(self) -> Mapping[str, str]:
        """Named prompts (what ``prompt_name`` may name)."""


class TokenCounter(Protocol):
    """What :func:`check_tokens` needs of the engine: :meth:`~embellama.engine.engine.EmbeddingEngine.acount_tokens`."""

    async def acount_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        """Tokens the model processes for ``texts`` with the prompt (raises ``InvalidInputError`` for a bad one)."""
        ...


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None
    prompt: str | None
    prompt_name: str | None
    prefix: str
    """What the engine puts in front of every input (``prompt``, or the model's prompt named ``prompt_name``)."""
    size: int
    """UTF-8 bytes of the inputs with the prefix counted once per input (at most ``max_body_bytes``)."""
    max_tokens: int
    """The model's tokens per input."""

    @property
    def token_bound(self) -> int:
        """An upper bound of the tokens the model processes for this request (see :func:`token_bound`)."""
        return token_bound(self.size, len(self.texts), self.max_tokens)


@dataclass(frozen=True)
class RerankRequest:
    """A validated ``POST /v1/rerank`` body."""

    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


# ------------------------------------------------------------------------------------------------------ the body


async def read_json(chunks: AsyncIterable[bytes], content_length: str | None, limits: ServerLimits) -> dict[str, Any]:
    """A body's JSON object, read up to ``max_body_bytes`` (413 past it, 400 if not a JSON object).

    Args:
        chunks: The body as it arrives (Starlette's ``request.stream()``).
        content_length: The ``Content-Length`` header, if any (a declared size over the limit is refused unread).
        limits: The server's limits.
    """
    over = too_large(f"request body over {limits.max_body_bytes} bytes")
    if content_length is not None and content_length.isdigit() and int(content_length) > limits.max_body_bytes:
        raise over
    parts, size = [], 0
    async for chunk in chunks:  # counted while read: a chunked upload is refused before it ends
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise over
        parts.append(chunk)
    return parse_json(b"".join(parts))


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a whole body (400 for bad JSON, JSON nested too deeply, or anything but an object)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise invalid_request(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise invalid_request("invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise invalid_request("the request body must be a JSON object")
    return data


# ------------------------------------------------------------------------------------------------------ fields


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_request(f"'{key}' must be a string, got {type(value).__name__}", key)
    return value


def _texts(value: Any, param: str, limits: ServerLimits) -> list[str]:
    """``input`` / ``documents``: a string or a non-empty list of strings, at most ``max_inputs``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid_request(f"'{param}' must be a string or a non-empty list of strings", param)
    if all(isinstance(v, int) for v in value) or all(isinstance(v, list) for v in value):
        raise invalid_request("token arrays are not supported: send text (LangChain's OpenAIEmbeddings: "
                              "check_embedding_ctx_length=False)", param)  # fmt: skip
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise invalid_request(f"'{param}[{i}]' must be a string, got {type(v).__name__}", f"{param}[{i}]")
    if len(value) > limits.max_inputs:
        raise too_large(f"{len(value)} inputs in one request; the limit is {limits.max_inputs}", param)
    return value


def _model_name(models: Mapping[str, ServedModel], data: dict[str, Any], kind: str) -> str:
    """``model``: a served model of ``kind`` (404 if not served; optional when it is the only one of its kind)."""
    name = data.get("model")
    if name is not None and not isinstance(name, str):
        raise invalid_request(f"'model' must be a string, got {type(name).__name__}", "model")
    served = [n for n, model in models.items() if model.kind == kind]
    if name is None and len(served) == 1:
        return served[0]
    if name is None or name not in models:
        raise ApiError(404, f"model {name!r} not found; served: {sorted(models)}", "not_found_error",
                       param="model", code="model_not_found")  # fmt: skip
    if models[name].kind != kind:
        what = "n embedding model" if kind == "reranker" else " reranker"
        raise invalid_request(f"model {name!r} is a{what}", "model")
    return name


def _encoding_format(data: dict[str, Any]) -> str:
    fmt = data.get("encoding_format")
    if fmt is None:
        return "float"
    if fmt not in ("float", "base64"):
        raise invalid_request("encoding_format must be 'float' or 'base64'", "encoding_format")
    return str(fmt)


def _dimensions(data: dict[str, Any], model: ServedModel) -> int | None:
    dims = data.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= model.dimensions):
        raise invalid_request(f"dimensions must be an integer in 1..{model.dimensions}", "dimensions")
    return dims


def _prefix(name: str, model: ServedModel, prompt: str | None, prompt_name: str | None) -> str:
    """What goes in front of every input: ``prompt``, else the model's prompt named ``prompt_name``, else nothing."""
    if prompt is not None:
        return prompt
    if prompt_name is None:
        return ""
    if prompt_name not in model.prompts:
        raise invalid_request(f"model {name!r} has no prompt named {prompt_name!r}; its prompts: "
                              f"{sorted(model.prompts)}", "prompt_name")  # fmt: skip
    return model.prompts[prompt_name]


def _utf8_size(text: str, param: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise invalid_request(f"{param}: not valid Unicode: {exc.reason} at character {exc.start}", param,
                              "invalid_input") from None  # fmt: skip


def _bounded_size(texts: list[str], param: str, prefix: str, prefix_param: str, limits: ServerLimits) -> int:
    """The inputs' UTF-8 size with the prefix counted once per input; past ``max_body_bytes`` a 413 (naming the
    prefix if there is one), and a lone surrogate anywhere a 400 naming its field."""
    expanded = sum(_utf8_size(t, f"{param}[{i}]") for i, t in enumerate(texts))
    expanded += _utf8_size(prefix, prefix_param) * len(texts)
    if expanded > limits.max_body_bytes:
        raise too_large(f"the request expands to {expanded} bytes with its {prefix_param} counted once per input; "
                        f"the limit is {limits.max_body_bytes} bytes", prefix_param if prefix else param)  # fmt: skip
    return expanded


# ------------------------------------------------------------------------------------------------------ requests


def parse_embeddings(
    models: Mapping[str, ServedModel], data: dict[str, Any], limits: ServerLimits
) -> EmbeddingsRequest:
    """A ``POST /v1/embeddings`` body's fields, each checked for type and range, in the order the API lists them.

    Args:
        models: The served models by name (``EmbeddingEngine.models``).
        data: The body's JSON object (:func:`read_json`).
        limits: The server's limits (``max_inputs``, ``max_body_bytes``).

    Raises:
        ApiError: 400 naming the malformed field, 404 for a model not served, 413 past a limit.
    """
    name = _model_name(models, data, "embedding")
    texts = _texts(data.get("input"), "input", limits)
    fmt = _encoding_format(data)
    model = models[name]
    dims = _dimensions(data, model)
    _optional_str(data, "user")
    prompt, prompt_name = _optional_str(data, "prompt"), _optional_str(data, "prompt_name")
    prefix = _prefix(name, model, prompt, prompt_name)
    size = _bounded_size(texts, "input", prefix, "prompt", limits)
    return EmbeddingsRequest(name, texts, fmt, dims, prompt, prompt_name, prefix, size, model.max_tokens)


def parse_rerank(models: Mapping[str, ServedModel], data: dict[str, Any], limits: ServerLimits) -> RerankRequest:
    """A ``POST /v1/rerank`` body's fields, each checked for type and range; the query counts once per document, and
    the token bound (not an exact count) is held to ``max_request_tokens``.

    Raises:
        ApiError: 400 naming the malformed field, 404 for a model not served, 413 past a limit.
    """
    name = _model_name(models, data, "reranker")
    query = data.get("query")
    if not isinstance(query, str):
        raise invalid_request("'query' must be a string", "query")
    documents = _texts(data.get("documents"), "documents", limits)
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise invalid_request(f"top_n must be an integer >= 1 or null, got {top_n!r}", "top_n")
    return_documents = data.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        raise invalid_request("'return_documents' must be a boolean", "return_documents")
    size = _bounded_size(documents, "documents", query, "query", limits)
    bound = token_bound(size, len(documents), models[name].max_tokens)
    if bound > limits.max_request_tokens:
        raise _too_many_tokens(bound, limits, exact=False)
    return RerankRequest(name, query, documents, top_n, bool(return_documents))


# ------------------------------------------------------------------------------------------------------ tokens


def token_bound(size: int, n_inputs: int, max_tokens: int) -> int:
    """An upper bound of the tokens a model processes for ``n_inputs`` inputs of ``size`` UTF-8 bytes in all: no
    tokenizer makes more tokens than bytes (plus the special tokens), and no input is processed past
    ``max_tokens``."""
    return min(size + SPECIAL_TOKENS * n_inputs, n_inputs * max_tokens)


def _too_many_tokens(tokens: int, limits: ServerLimits, exact: bool) -> ApiError:
    what = f"{tokens} tokens" if exact else f"up to {tokens} tokens (its UTF-8 size)"
    return too_large(f"the request has {what}; the limit is {limits.max_request_tokens} tokens per request "
                     "(max_request_tokens): send fewer or shorter inputs", code="too_many_tokens")  # fmt: skip


async def check_tokens(counter: TokenCounter, req: EmbeddingsRequest, limits: ServerLimits) -> None:
    """The prompt must fit the model (400) and the request ``max_request_tokens`` (413). Only what its UTF-8 size
    cannot prove small is tokenized here (a long prompt, a large request); everything else is tokenized once, when
    embedded.

    Raises:
        ApiError: 400 naming ``prompt`` / ``prompt_name`` or the bad input, 413 ``too_many_tokens``.
    """
    kwargs = {"prompt": req.prompt, "prompt_name": req.prompt_name}
    if req.prefix and _utf8_size(req.prefix, "prompt") + SPECIAL_TOKENS > req.max_tokens:
        param = "prompt" if req.prompt is not None else "prompt_name"
        try:
            alone = await counter.acount_tokens(req.model, [""], **kwargs)
        except InvalidInputError as exc:
            raise invalid_request(f"{param}: {exc.reason}", param, "invalid_input") from None
        if alone > req.max_tokens:
            raise invalid_request(f"{param}: the prompt has {alone} tokens (with the model's special tokens); the "
                                  f"model's limit is {req.max_tokens} tokens per input", param,
                                  "invalid_input")  # fmt: skip
    if req.token_bound > limits.max_request_tokens:
        try:
            tokens = await counter.acount_tokens(req.model, req.texts, **kwargs)
        except InvalidInputError as exc:
            raise invalid_input(exc, "input") from None
        if tokens > limits.max_request_tokens:
            raise _too_many_tokens(tokens, limits, exact=True)
