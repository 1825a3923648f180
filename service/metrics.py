"""Prometheus metrics in the text exposition format, hand-rolled to avoid a dependency.

Counters and histograms are keyed by label values; a lock makes them safe to update from the
event loop and from the encoder's worker thread alike.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf"
    return repr(float(x)) if x != int(x) else str(int(x))


class Counter:
    """A monotonically increasing count per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            for labels, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, labels)} {_num(v)}")
        return lines


class Gauge(Counter):
    """A value that is set, not accumulated (used for version info, value 1)."""

    kind = "gauge"

    def set(self, *labels: str, value: float = 1.0, exclusive: bool = False) -> None:
        """Set one series; ``exclusive`` drops the others (e.g. the previous version)."""
        with self._lock:
            if exclusive:
                self._values.clear()
            self._values[labels] = value


class Histogram:
    """Cumulative bucket counts, sum and count per label combination."""

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = (*buckets, math.inf)
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        # One count in the value's own bucket (on the request path); render() accumulates.
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * len(self.buckets), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for labels, (counts, total) in sorted(self._series.items()):
                cumulative = list(itertools.accumulate(counts))
                for bound, c in zip(self.buckets, cumulative, strict=True):
                    le = _labels(self.label_names, labels, f'le="{_num(bound)}"')
                    lines.append(f"{self.name}_bucket{le} {c}")
                lab = _labels(self.label_names, labels)
                lines.append(f"{self.name}_sum{lab} {_num(total[0])}")
                lines.append(f"{self.name}_count{lab} {cumulative[-1]}")
        return lines


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "ctl_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
        )
        self.latency = Histogram(
            "ctl_http_request_duration_seconds",
            "HTTP request latency by endpoint and status.",
            LATENCY_BUCKETS,
            ("endpoint", "method", "status"),
        )
        self.cache_hits = Counter("ctl_cache_hits_total", "Cache hits by kind.", ("kind",))
        self.cache_misses = Counter("ctl_cache_misses_total", "Cache misses by kind.", ("kind",))
        self.cache_errors = Counter(
            "ctl_cache_errors_total",
            "Cache backend failures (the cache was bypassed).",
            ("backend",),
        )
        self.batch_size = Histogram(
            "ctl_encoder_batch_size", "Scenes per encoder call.", BATCH_BUCKETS
        )
        self.encoder_seconds = Histogram(
            "ctl_encoder_batch_seconds", "Time of one encoder call.", LATENCY_BUCKETS
        )
        self.versions = Gauge(
            "ctl_serving_info",
            "The model and index versions being served (value 1).",
            ("model_version", "index_version"),
        )
        self.reloads = Counter("ctl_reloads_total", "Admin reloads by outcome.", ("outcome",))

    def render(self) -> str:
        """The whole exposition, ready for ``text/plain; version=0.0.4``."""
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.cache_hits,
            self.cache_misses,
            self.cache_errors,
            self.batch_size,
            self.encoder_seconds,
            self.versions,
            self.reloads,
        ):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
