"""The ``embellama`` command: ``embed``, ``rerank``, ``serve``, ``ingest``, ``default-model``, ``demo``, ...

Run as ``embellama`` (the installed script) or ``python -m embellama.cli``.
"""

from embellama.cli.main import main

__all__ = ["main"]
