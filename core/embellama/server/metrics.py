"""The server's metrics (``GET /metrics``), in Prometheus' text format.

Every metric is a bounded set of samples (labels come from the routes, statuses and error types the server itself
defines, never from what a client sends). :meth:`Metrics.families` describes them once; they are exposed through
``prometheus_client`` when it is installed (with its process, platform and garbage-collector metrics), else by a
hand-written renderer of the same families with the same ``# HELP`` / ``# TYPE`` lines and the Linux process
metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``, ...).
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Family", "Histogram", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

Sample = tuple[str, dict[str, str], float]
"""A sample: its full name (``..._bucket``, ``..._total``), labels, value."""


@dataclass(frozen=True)
class Family:
    """One metric: name (counters end in ``_total``), type, help text and samples."""

    name: str
    kind: str
    help: str
    samples: list[Sample]


class Histogram:
    """Running Prometheus histogram: cumulative bucket counts, sum and count (constant memory)."""

    def __init__(self, name: str, buckets: tuple[float, ...], help: str) -> None:
        self.name, self.buckets, self.help = name, buckets, help
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def family(self) -> Family:
        """This histogram as a metric family."""
        samples: list[Sample] = [
            (f"{self.name}_bucket", {"le": str(b)}, c) for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        samples += [(f"{self.name}_bucket", {"le": "+Inf"}, self.n), (f"{self.name}_sum", {}, self.total)]
        return Family(self.name, "histogram", self.help, [*samples, (f"{self.name}_count", {}, self.n)])


@dataclass
class Metrics:
    """The server's counters, gauges and histograms."""

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    texts: int = 0
    tokens: int = 0
    queued: int = 0
    dropped: int = 0
    """Requests answered 503 because they did not finish within the shutdown's drain time."""
    latency: Histogram = field(
        default_factory=lambda: Histogram("embellama_request_seconds", LATENCY_BUCKETS, "Seconds to answer a request.")
    )
    batch_sizes: Histogram = field(
        default_factory=lambda: Histogram("embellama_request_texts", BATCH_BUCKETS, "Texts (or documents) per request.")
    )
    connections: Callable[[], dict[str, float]] | None = None
    """What the connection guard reports: ``{"open": n, "timed_out": n, "evicted": n, "refused": n}``."""
    registry: Any = field(default=None, repr=False, compare=False)
    """The ``prometheus_client`` registry exposing these metrics (made at the first scrape)."""

    def served(self, texts: int, tokens: int = 0) -> None:
        """Count a request answered with ``texts`` texts (or documents) of ``tokens`` tokens."""
        self.texts += texts
        self.tokens += tokens
        self.batch_sizes.observe(texts)

    def families(self) -> list[Family]:
        """Every metric the server exposes (its own; process metrics are added by the renderers)."""
        requests = [
            ("embellama_requests_total", {"path": p, "status": str(s)}, float(n))
            for (p, s), n in sorted(self.requests.items())
        ]
        errors = [("embellama_errors_total", {"type": t}, float(n)) for t, n in sorted(self.errors.items())]
        out = [
            Family("embellama_requests_total", "counter", "Requests answered, by route and HTTP status.", requests),
            Family("embellama_errors_total", "counter", "Error answers, by OpenAI error type.", errors),
            Family("embellama_texts_total", "counter", "Texts embedded or documents scored.",
                   [("embellama_texts_total", {}, float(self.texts))]),
            Family("embellama_tokens_total", "counter", "Tokens of the embedded texts (usage).",
                   [("embellama_tokens_total", {}, float(self.tokens))]),
            Family("embellama_queued_texts", "gauge", "Texts accepted but not yet answered.",
                   [("embellama_queued_texts", {}, float(self.queued))]),
            Family("embellama_dropped_requests_total", "counter",
                   "Requests answered 503 at shutdown because they did not finish within the drain time.",
                   [("embellama_dropped_requests_total", {}, float(self.dropped))]),
            self.latency.family(),
            self.batch_sizes.family(),
        ]  # fmt: skip
        if self.connections is not None:
            report = self.connections()
            out.append(Family("embellama_open_connections", "gauge", "Open client connections.",
                              [("embellama_open_connections", {}, report.get("open", 0.0))]))  # fmt: skip
            closed = [
                ("embellama_connections_closed_total", {"reason": reason}, report.get(reason, 0.0))
                for reason in ("timed_out", "evicted", "refused")
            ]
            why = (
                "Connections the guard closed: header/body deadline passed (timed_out), made room for a newcomer at "
                "the cap (evicted), or answered 503 at the cap (refused)."
            )
            out.append(Family("embellama_connections_closed_total", "counter", why, closed))
        return out

    def render(self) -> tuple[bytes, str]:
        """The exposition (body, content type): ``prometheus_client``'s when installed, else the fallback's."""
        try:
            from prometheus_client import CONTENT_TYPE_LATEST
        except ImportError:
            return self.render_fallback().encode(), "text/plain; version=0.0.4; charset=utf-8"
        return _prometheus_exposition(self), CONTENT_TYPE_LATEST

    def render_fallback(self) -> str:
        """The text format without ``prometheus_client``: the same families, and the process metrics it reads."""
        lines: list[str] = []
        for family in [*self.families(), *_process_families()]:
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
            for name, labels, value in family.samples:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{name}{{{text}}} {value!r}" if text else f"{name} {value!r}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _prometheus_exposition(metrics: Metrics) -> bytes:
    """Render through a registry of ``metrics``' families plus prometheus_client's process/platform/gc collectors."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
    from prometheus_client.core import Metric

    registry = metrics.registry
    if registry is None:

        class _Collector:
            def collect(self) -> Any:
                for family in metrics.families():
                    name = family.name[: -len("_total")] if family.kind == "counter" else family.name
                    metric = Metric(name, family.help, family.kind)
                    for sample_name, labels, value in family.samples:
                        metric.add_sample(sample_name, labels, value)
                    yield metric

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        metrics.registry = registry
    body: bytes = generate_latest(registry)
    return body


_START = time.time()


def _process_families() -> list[Family]:
    """The process metrics prometheus_client's ProcessCollector exposes, read without it (Linux; else fewer)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = [
        Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
               [("process_cpu_seconds_total", {}, usage.ru_utime + usage.ru_stime)]),
        Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
               [("process_start_time_seconds", {}, _START)]),
    ]  # fmt: skip
    try:
        with open("/proc/self/statm") as f:
            pages = [int(x) for x in f.read().split()[:2]]
        page = os.sysconf("SC_PAGE_SIZE")
        out += [
            Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                   [("process_virtual_memory_bytes", {}, float(pages[0] * page))]),
            Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                   [("process_resident_memory_bytes", {}, float(pages[1] * page))]),
            Family("process_open_fds", "gauge", "Number of open file descriptors.",
                   [("process_open_fds", {}, float(len(os.listdir("/proc/self/fd"))))]),
        ]  # fmt: skip
    except (OSError, ValueError, IndexError):  # not Linux
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out.append(Family("process_max_fds", "gauge", "Maximum number of open file descriptors.",
                      [("process_max_fds", {}, float(soft))]))  # fmt: skip
    return out
