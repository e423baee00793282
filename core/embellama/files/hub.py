"""Getting GGUF files from a model hub through ``huggingface_hub`` (the optional ``hub`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from embellama.errors import ConfigurationError, ModelNotFoundError

__all__ = ["FromPretrained", "download_model"]

T = TypeVar("T")

_INSTALL_HINT = "downloading from a hub needs huggingface_hub: pip install 'embellama[hub]'"


def _hf_hub_download() -> Any:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is in the hub extra
        raise ModelNotFoundError(_INSTALL_HINT) from None
    return hf_hub_download


def download_model(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return the local path of ``filename`` from the hub repository ``repo_id``, downloading it if needed.

    Uses the hub cache (``$HF_HUB_CACHE``, ``$HF_HOME``), so a file fetched once is not fetched again; with
    ``HF_HUB_OFFLINE=1`` only the cache is consulted.

    Args:
        repo_id: Repository id, e.g. ``"org/model-GGUF"``.
        filename: GGUF file inside the repository, e.g. ``"model-q8_0.gguf"``.
        revision: Branch, tag or commit. Defaults to the main branch.
        cache_dir: Hub cache folder. Defaults to huggingface_hub's.

    Raises:
        ConfigurationError: ``repo_id`` or ``filename`` is empty, or ``filename`` is not a ``.gguf`` file.
        ModelNotFoundError: huggingface_hub is missing, or the file is neither cached nor downloadable.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ConfigurationError(f"repo_id must be a non-empty string, got {repo_id!r}")
    if not isinstance(filename, str) or not filename.lower().endswith(".gguf"):
        raise ConfigurationError(f"filename must name a .gguf file in the repository, got {filename!r}")
    hf_hub_download = _hf_hub_download()
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # huggingface_hub raises many types: offline miss, 404, network, auth
        raise ModelNotFoundError(
            f"cannot get {filename!r} from {repo_id!r}"
            f"{f' at revision {revision!r}' if revision else ''}: {type(exc).__name__}: {exc}"
        ) from exc
    return Path(path)


class FromPretrained:
    """Mixin giving a class built from ``model_path=...`` a ``from_pretrained(repo_id, filename)`` constructor.

    The core client and both framework adapters use it, so getting a model from a hub works the same way in each.
    """

    @classmethod
    def from_pretrained(
        cls: type[T],
        repo_id: str,
        filename: str,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        **options: Any,
    ) -> T:
        """Use ``filename`` from the hub repository ``repo_id``, downloaded or found in the hub cache.

        Needs the ``hub`` extra (``huggingface_hub``); honours ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``.

        Args:
            repo_id: Repository id, e.g. ``"org/model-GGUF"``.
            filename: GGUF file inside the repository.
            revision: Branch, tag or commit. Defaults to the main branch.
            cache_dir: Hub cache folder. Defaults to huggingface_hub's.
            **options: The class's other options (pooling, instructions, ...).
        """
        path = download_model(repo_id, filename, revision=revision, cache_dir=cache_dir)
        factory: Any = cls
        instance: T = factory(model_path=str(path), **options)
        return instance
