"""The service's Prometheus metrics, through ``prometheus_client``.

One process: each app has its own registry (tests build many apps), with the process and
garbage-collector metrics beside the service's. Several uvicorn workers (``ctl serve --workers
N``): ``PROMETHEUS_MULTIPROC_DIR`` names a directory (``ctl serve`` makes a fresh one), every
worker writes its values there, and ``/metrics`` from any worker merges all of them
(prometheus_client's multi-process mode; process metrics are not available in that mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# No ``*_created`` series: nothing here reads them, and they double the counters' exposition.
prometheus_client.disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The multi-process directory when several workers share the metrics, else ``None``."""
    return os.environ.get(MULTIPROC_ENV) or None


class ServiceMetrics:
    """Every metric the service exports, registered in ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if multiprocess_dir() is None:
            prometheus_client.ProcessCollector(registry=self.registry)
            prometheus_client.PlatformCollector(registry=self.registry)
            prometheus_client.GCCollector(registry=self.registry)
        reg = self.registry
        self.requests = Counter(
            "ctl_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
            registry=reg,
        )
        self.latency = Histogram(
            "ctl_http_request_duration_seconds",
            "HTTP request latency by endpoint and status.",
            ("endpoint", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        hits = Counter("ctl_cache_hits_total", "Cache hits by kind.", ("kind",), registry=reg)
        misses = Counter("ctl_cache_misses_total", "Cache misses by kind.", ("kind",), registry=reg)
        # Bound once: looking a series up by its labels costs more than counting in it.
        self.cache_hits = {kind: hits.labels(kind) for kind in ("embedding", "result")}
        self.cache_misses = {kind: misses.labels(kind) for kind in ("embedding", "result")}
        self.cache_errors = Counter(
            "ctl_cache_errors_total",
            "Cache backend failures (the cache was bypassed).",
            ("backend",),
            registry=reg,
        )
        self.batch_size = Histogram(
            "ctl_encoder_batch_size",
            "Scenes per encoder call.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.encoder_seconds = Histogram(
            "ctl_encoder_batch_seconds",
            "Time of one encoder call.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        # Across workers, the highest value of each version pair among live workers: 1 for
        # every pair some worker serves, 0 for pairs all of them replaced.
        self.versions = Gauge(
            "ctl_serving_info",
            "The model and index versions being served (value 1).",
            ("model_version", "index_version"),
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "ctl_reloads_total", "Admin reloads by outcome.", ("outcome",), registry=reg
        )
        self._serving: tuple[str, str] | None = None

    def serving(self, model_version: str, index_version: str) -> None:
        """Mark this version pair as served (value 1) and the previous one as not.

        Across workers a series cannot be removed (prometheus_client warns at each try): the
        old pair is set to 0 there, and the exposition leaves out the pairs at 0.
        """
        if self._serving is not None:
            self.versions.labels(*self._serving).set(0)
            if multiprocess_dir() is None:
                self.versions.remove(*self._serving)
        self._serving = (model_version, index_version)
        self.versions.labels(*self._serving).set(1)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value in this process (0 when absent): for tests and logs."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self) -> bytes:
        """The text exposition: this process's metrics, or every worker's merged."""
        directory = multiprocess_dir()
        if directory is None:
            return prometheus_client.generate_latest(self.registry)
        _forget_dead_workers(directory)
        merged = CollectorRegistry()
        _ServedOnly(merged, path=directory)
        return prometheus_client.generate_latest(merged)


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that are gone: uvicorn restarts a worker that died
    without the worker's own cleanup (``mark_process_dead`` at its shutdown), and its last
    versions would count as served for ever."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(pid), directory)
        except PermissionError:  # alive, another user's
            pass


class _ServedOnly(multiprocess.MultiProcessCollector):
    """The merged metrics, with only the version pairs some live worker serves (value 1)."""

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            if metric.name == "ctl_serving_info":
                metric.samples = [s for s in metric.samples if s.value]
            yield metric
