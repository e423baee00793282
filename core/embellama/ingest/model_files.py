"""The same model on every node: the driver's model file, checked on each node, and shipped to nodes that lack it.

A cluster job must embed every row with one model: a node holding another file at the same path would silently
put vectors of another vector space into the table. The driver therefore describes its file once
(:func:`driver_model_file`: path, size and whole-file fingerprint, see
:func:`embellama.files.identity.file_fingerprint`)
before any actor starts, and every node resolves it to a local file with the same size and fingerprint
(:func:`local_model_path`) or fails naming itself::

    node 10.0.0.7: /models/e5.gguf differs from the driver's (fingerprint 3fa2... vs 91bc...)
    node 10.0.0.8: /models/e5.gguf missing (the driver's model; copy it there, or ship it with ship_model=True)

With shipping (:func:`ship`), the driver puts the file's bytes into Ray's object store in chunks; a node that
lacks the file copies them once into ``$EMBELLAMA_CACHE/shipped/`` (one copy per node and fingerprint, under a
file lock, verified by its hash before it is used), and every later actor there loads that copy. A node that holds
a *different* file at the path still fails: shipping never hides a misconfigured node.

:func:`check_nodes` runs the check on every alive node up front (a zero-CPU task pinned to each), so a bad node
fails the job before any row is embedded, and shipping happens there once per node; actors check again when they
start (nodes that join later, autoscaling).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from embellama.errors import ConfigurationError, ModelLoadError, ModelNotFoundError
from embellama.files.default_model import cache_dir
from embellama.files.gguf import check_model_file
from embellama.files.identity import file_fingerprint

__all__ = [
    "CHUNK_BYTES",
    "ModelFile",
    "check_nodes",
    "driver_model_file",
    "local_model_path",
    "node_label",
    "ship",
    "shipped_dir",
]

CHUNK_BYTES = 64 << 20
"""Bytes per object-store chunk of a shipped model (a node holds one chunk in memory at a time while copying)."""

NODE_CHECK_TIMEOUT = 600.0
"""Seconds :func:`check_nodes` waits for every node (hashing, and with shipping copying, a large GGUF)."""


@dataclass(frozen=True)
class ModelFile:
    """The driver's model file, as every node must see it."""

    path: str
    """The file's path on the driver (and on every node that has it)."""
    size: int
    """Its size in bytes."""
    fingerprint: str
    """Its content hash (:func:`embellama.files.identity.file_fingerprint`)."""
    chunks: tuple[Any, ...] = ()
    """With shipping: Ray object refs of the file's bytes, in order (see :func:`ship`); empty otherwise."""

    @property
    def shipped(self) -> bool:
        """Whether nodes that lack the file get it from the object store."""
        return bool(self.chunks)


def driver_model_file(path: str | Path) -> ModelFile:
    """Describe the driver's model file (checked and hashed here, before anything runs on the cluster).

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelLoadError: it is a directory, empty, or not a GGUF file.
    """
    path = Path(path).absolute()
    check_model_file(path)
    return ModelFile(str(path), path.stat().st_size, file_fingerprint(path))


def ship(model: ModelFile, *, chunk_bytes: int = CHUNK_BYTES) -> ModelFile:
    """Put the file's bytes into Ray's object store, for nodes that lack it (:func:`local_model_path`).

    The chunks live as long as the returned value (and the datasets built with it) is referenced in the driver.
    """
    import ray

    if model.shipped:
        return model
    chunks = []
    with open(model.path, "rb") as f:
        while block := f.read(chunk_bytes):
            chunks.append(ray.put(block))
    return replace(model, chunks=tuple(chunks))


def node_label() -> str:
    """``node <ip>`` for the node this process runs on (the host name outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return f"node {ray.util.get_node_ip_address()}"  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - without Ray only the local checks run
        pass
    return f"node {os.uname().nodename}"


def shipped_dir() -> Path:
    """Where shipped models are copied on each node: ``$EMBELLAMA_CACHE/shipped``."""
    return cache_dir() / "shipped"


def local_model_path(model: ModelFile) -> Path:
    """The file on this node that is the driver's model: its own path, or the shipped copy (made here if needed).

    Raises:
        ConfigurationError: the path holds a different file (another size or fingerprint) on this node.
        ModelNotFoundError: the path is missing on this node and the model is not shipped.
        ModelLoadError: the shipped copy could not be written or does not hash to the driver's fingerprint.
    """
    path = Path(model.path)
    where = node_label()
    if path.exists():
        _same_file(path, model, f"{where}: {path}")
        return path
    if not model.shipped:
        raise ModelNotFoundError(
            f"{where}: {path} missing (the driver's model, fingerprint {model.fingerprint}); copy it to the same "
            "path on every node, or pass ship_model=True"
        )
    return _fetch(model, where)


def _same_file(path: Path, model: ModelFile, what: str) -> None:
    if not path.is_file():
        raise ConfigurationError(f"{what} differs from the driver's (not a file)")
    size = path.stat().st_size
    if size != model.size:
        raise ConfigurationError(f"{what} differs from the driver's (size {size} vs {model.size} bytes)")
    fingerprint = file_fingerprint(path)
    if fingerprint != model.fingerprint:
        raise ConfigurationError(f"{what} differs from the driver's (fingerprint {fingerprint} vs {model.fingerprint})")


def _fetch(model: ModelFile, where: str) -> Path:
    """Copy the shipped chunks into this node's cache once (other processes wait on the lock), verified."""
    import ray

    target = shipped_dir() / f"{model.fingerprint}-{Path(model.path).name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if target.exists():
            _same_file(target, model, f"{where}: shipped copy {target}")
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for ref in model.chunks:
                    block = ray.get(ref)
                    digest.update(block)
                    out.write(block)
                    del block
            fingerprint = digest.hexdigest()[:16]
            if fingerprint != model.fingerprint or tmp.stat().st_size != model.size:
                raise ModelLoadError(
                    f"{where}: the shipped copy of {model.path} arrived with fingerprint {fingerprint}, "
                    f"not the driver's {model.fingerprint}"
                )
            os.replace(tmp, target)
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot write the shipped copy of {model.path} to {target}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_here(model: ModelFile) -> tuple[str, str, float]:
    started = time.perf_counter()
    path = local_model_path(model)
    return node_label(), str(path), time.perf_counter() - started


def check_nodes(model: ModelFile, *, timeout: float = NODE_CHECK_TIMEOUT) -> dict[str, str]:
    """Check the model on every alive node now (shipping it where it is missing, if shipped); return each node id's
    local path.

    Raises:
        ConfigurationError: a node holds a different file at the path, or a node did not answer within
            ``timeout`` seconds; every failing node is named.
        ModelNotFoundError: a node lacks the file (and it is not shipped), naming every such node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_check_here)
    pending = {
        node["NodeID"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(model)
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node.get("Alive")
    }
    deadline = time.monotonic() + timeout
    paths: dict[str, str] = {}
    failures: list[BaseException] = []
    for node_id, ref in pending.items():
        try:
            _, path, _ = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            paths[node_id] = path
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            failures.append(ConfigurationError(f"node {node_id}: no answer to the model check in {timeout:.0f} s"))
        except ray.exceptions.RayTaskError as exc:
            failures.append(exc.cause if isinstance(exc.cause, BaseException) else exc)
    if failures:
        message = "; ".join(str(f) for f in failures)
        if all(isinstance(f, ModelNotFoundError) for f in failures):
            raise ModelNotFoundError(message)
        raise ConfigurationError(message)
    return paths
