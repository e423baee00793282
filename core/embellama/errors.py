"""One exception hierarchy for everything embellama raises."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EmbeddingError",
    "EmbellamaError",
    "EngineClosedError",
    "InvalidInputError",
    "ModelCrashedError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelTimeoutError",
]


class EmbellamaError(Exception):
    """Base class of every error embellama raises."""


class ConfigurationError(EmbellamaError, ValueError):
    """A configuration value, or a combination of values, is invalid.

    Raised before any native call, so a setting that would make llama.cpp abort the process never reaches it.
    """


class ModelNotFoundError(EmbellamaError, FileNotFoundError):
    """The model file does not exist, or a model name is not registered with the engine."""


class ModelLoadError(EmbellamaError):
    """The model file exists but cannot be loaded as an embedding model (not a GGUF, truncated, unsupported)."""


class EmbeddingError(EmbellamaError):
    """The forward pass failed for a reason that is not the input's fault."""


class ModelCrashedError(EmbeddingError):
    """The process running the model died (native abort or signal) while serving this request."""


class ModelTimeoutError(EmbeddingError, TimeoutError):
    """A process-isolated model made no progress for ``request_timeout`` seconds; its process was killed and is
    restarted for the next request."""


class EngineClosedError(EmbellamaError, RuntimeError):
    """The engine (or the model's worker) was closed before this request could be served."""


class InvalidInputError(EmbellamaError, ValueError):
    """One input text is unusable: wrong type, not encodable, or longer than the model accepts.

    Attributes:
        index: Position of the offending text in the caller's batch (``None`` for a single text).
        reason: What is wrong, in words.
        n_tokens: Token count of the text, when the problem is its length.
        limit: The model's token limit, when the problem is its length.
        preview: The first characters of the text (to find it in a corpus), when it is a str.
        subject: What is unusable: ``"text"`` (an input), ``"prompt"`` or ``"query"`` (put before or beside
            every input of a request; such an error names no index).
    """

    PREVIEW_CHARS = 40

    def __init__(
        self,
        reason: str,
        *,
        index: int | None = None,
        n_tokens: int | None = None,
        limit: int | None = None,
        model_name: str | None = None,
        preview: str | None = None,
        subject: str = "text",
    ) -> None:
        self.reason = reason
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit
        self.model_name = model_name
        self.preview = preview
        self.subject = subject
        where = f"{subject} at index {index}" if index is not None else subject
        if preview is not None:
            where += f" {preview!r}"
        model = f" (model {model_name!r})" if model_name else ""
        super().__init__(f"{where}{model}: {reason}")

    def at_index(self, index: int | None, text: str | None = None) -> InvalidInputError:
        """Return a copy of this error naming ``index`` (and, given ``text``, a preview of it)."""
        preview = self.preview
        if text is not None:
            cut = text[: self.PREVIEW_CHARS]
            preview = cut + ("…" if len(text) > self.PREVIEW_CHARS else "")
        return InvalidInputError(
            self.reason,
            index=index,
            n_tokens=self.n_tokens,
            limit=self.limit,
            model_name=self.model_name,
            preview=preview,
            subject=self.subject,
        )

    def with_model_name(self, model_name: str | None) -> InvalidInputError:
        """Return a copy of this error naming the model ``model_name`` (the name the user knows it by)."""
        return InvalidInputError(
            self.reason,
            index=self.index,
            n_tokens=self.n_tokens,
            limit=self.limit,
            model_name=model_name,
            preview=self.preview,
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # keeps keyword attributes across pickling (process isolation sends errors between processes)
        return (
            _rebuild_invalid_input,
            (self.reason, self.index, self.n_tokens, self.limit, self.model_name, self.preview, self.subject),
        )


def _rebuild_invalid_input(
    reason: str,
    index: int | None,
    n_tokens: int | None,
    limit: int | None,
    model_name: str | None,
    preview: str | None = None,
    subject: str = "text",
) -> InvalidInputError:
    return InvalidInputError(
        reason, index=index, n_tokens=n_tokens, limit=limit, model_name=model_name, preview=preview, subject=subject
    )
