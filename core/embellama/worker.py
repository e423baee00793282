"""Deprecated: the old home of the request types and the worker threads.

Kept so that existing imports keep working; each name now lives in the module that owns it
(:mod:`embellama.types`, :mod:`embellama.scheduler`, :mod:`embellama.cpu`). Importing a name from here warns.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "ModelInfo": "embellama.types",
    "Job": "embellama.types",
    "JobResult": "embellama.types",
    "Payload": "embellama.types",
    "JobQueue": "embellama.scheduler",
    "COALESCE_TEXTS": "embellama.scheduler",
    "idle_cores": "embellama.cpu",
    "usable_cores": "embellama.cpu",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'embellama.worker' has no attribute {name!r}")
    warnings.warn(
        f"embellama.worker.{name} moved to {module}.{name}; embellama.worker will be removed",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
