"""Request metrics and the ``/metrics`` endpoint, one implementation for every tongban
Flask app (the gateway, each adapter), each on the registry it is given.

Labels are the method (``OTHER`` for any method not in :data:`METHODS`), the URL rule's
template (``<unmatched>`` for a path no rule serves) and the status code: never a path as
requested, which could carry an ID number. ``/metrics`` answers the holder of the
operator's metrics token only (:class:`~tongban.primitives.metrics_auth.MetricsCredential`;
401 ``metrics-unauthenticated`` otherwise), in the text format or OpenMetrics if asked.

Under several gunicorn workers (:mod:`tongban.gunicorn_conf`), prometheus_client keeps every
counter, histogram and gauge of every worker in files of one directory
(``PROMETHEUS_MULTIPROC_DIR``, set by the master before any worker imports
prometheus_client), and ``/metrics`` answers the deployment's totals whichever worker
takes the scrape: each family the files hold is served merged across workers
(:class:`~prometheus_client.multiprocess.MultiProcessCollector`: counters and histograms
summed, gauges by their ``multiprocess_mode``); what the files cannot hold (a collector
that reads its values at the scrape, such as an adapter's source and certificate
collectors) is served as this worker reads it. In one process nothing changes: the
registry is served as it is.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from tongban.primitives.metrics_auth import MetricsCredential

__all__ = [
    "BUCKETS",
    "METHODS",
    "UNMATCHED",
    "RequestMetrics",
    "exposition",
    "install_request_metrics",
    "metrics_blueprint",
    "multiprocess_dir",
]

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Latency buckets around the goal (p99 under 50 ms) and the batch endpoint's seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class RequestMetrics:
    """``tongban_http_requests_total`` and ``tongban_http_request_duration_seconds``."""

    requests: Counter
    latency: Histogram

    @classmethod
    def on(cls, registry: CollectorRegistry) -> RequestMetrics:
        return cls(
            Counter(
                "tongban_http_requests",
                "HTTP requests by method, route template and status code.",
                ["method", "route", "status"],
                registry=registry,
            ),
            Histogram(
                "tongban_http_request_duration_seconds",
                "Time from request start to response, by method and route template.",
                ["method", "route"],
                buckets=BUCKETS,
                registry=registry,
            ),
        )


def install_request_metrics(app: Flask, metrics: RequestMetrics) -> None:
    """Count and time every request of ``app``."""

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        started = g.pop("metrics_started", None)
        rule = request.url_rule
        route = UNMATCHED if rule is None else rule.rule
        method = request.method if request.method in METHODS else "OTHER"
        metrics.requests.labels(method, route, str(resp.status_code)).inc()
        if started is not None:
            metrics.latency.labels(method, route).observe(time.perf_counter() - started)
        return resp


def multiprocess_dir() -> str | None:
    """The directory this process's metric values live in, or ``None`` in one process.
    Values are kept in files only if ``PROMETHEUS_MULTIPROC_DIR`` was set before
    prometheus_client was first imported (its value class is chosen then), so that choice
    is read, not the variable: set later, it would name files nobody writes."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Deployment(Collector):
    """``registry`` with every family the workers' files hold replaced by its merge."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self.registry = registry
        self.path = path

    def collect(self) -> Iterable[Metric]:
        # The registry first: a gauge read at the scrape writes this worker's reading to
        # its file as it is collected (gateway/metrics.py), before the files are merged.
        mine = list(self.registry.collect())
        files = glob.glob(os.path.join(self.path, "*.db"))
        families: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True
        )
        merged = {m.name: m for m in families}
        # A family no file holds is a collector read at the scrape, or a labelled metric
        # no worker has used yet (no samples): either is served as this worker has it.
        return [merged.get(family.name, family) for family in mine]


def exposition(registry: CollectorRegistry) -> Collector:
    """What a scrape of ``registry`` serves: the registry itself in one process, the
    deployment's totals under several workers (see the module)."""
    path = multiprocess_dir()
    return registry if path is None else _Deployment(registry, path)


def metrics_blueprint(credential: MetricsCredential, registry: CollectorRegistry) -> Blueprint:
    """``GET /metrics`` of ``registry`` (of every worker's, see :func:`exposition`), to the
    holder of ``credential`` only."""
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        credential.check(request.headers.get("Authorization"))
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = Response(encode(exposition(registry)), 200)
        resp.headers["Content-Type"] = content_type
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp
