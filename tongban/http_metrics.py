"""Request metrics and the ``/metrics`` endpoint, one implementation for every tongban
Flask app (the gateway, each adapter), each on the registry it is given.

Labels are the method (``OTHER`` for any method not in :data:`METHODS`), the URL rule's
template (``<unmatched>`` for a path no rule serves) and the status code: never a path as
requested, which could carry an ID number. ``/metrics`` answers the holder of the
operator's metrics token only (:class:`~tongban.primitives.metrics_auth.MetricsCredential`;
401 ``metrics-unauthenticated`` otherwise), in the text format or OpenMetrics if asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from tongban.primitives.metrics_auth import MetricsCredential

__all__ = [
    "BUCKETS",
    "METHODS",
    "UNMATCHED",
    "RequestMetrics",
    "install_request_metrics",
    "metrics_blueprint",
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


def metrics_blueprint(credential: MetricsCredential, registry: CollectorRegistry) -> Blueprint:
    """``GET /metrics`` of ``registry``, to the holder of ``credential`` only."""
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        credential.check(request.headers.get("Authorization"))
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = Response(encode(registry), 200)
        resp.headers["Content-Type"] = content_type
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp
