"""The adapter's HTTP shell (Flask). All logic lives in :class:`AdapterCore`.

``GET /metrics`` (Prometheus text format, or OpenMetrics if the scraper asks), to the
holder of the operator's metrics token only (tongban.primitives.metrics_auth; 401
``metrics-unauthenticated`` otherwise), on a registry of the app's own, with the gateway's
conventions (gateway/metrics.py)::

    tongban_http_requests_total{method, route, status}      every request
    tongban_http_request_duration_seconds{method, route}     its latency (histogram)
    tongban_department_file_defects_total{department}       answers the file's SQL gave
                                                            in an undeclared shape
    tongban_department_source_ready{department, kind}       1 if the source answers a
                                                            probe now, else 0
    tongban_tls_certificate_not_after_seconds{certificate}  when the adapter's TLS
                                                            certificate ends (Unix time)
    tongban_tls_certificate_expires_soon{certificate}       1 within 30 days of that end

The source's two are read from it at scrape time (:class:`SourceCollector`), the
certificate's from ``tls_status`` (:class:`CertificateCollector`), which ``/healthz``
also shows as ``certificate`` (with ``warning`` set 30 days before the end).
No label carries a subject, a parameter or an answer: ``route`` is the URL rule's template,
``department`` the file's name, ``kind`` the source's (``managed``, ``sqlite``,
``postgresql``, ``mysql``) and ``certificate`` the certificate's CN (the department). The
counts are this process's (one gunicorn worker per adapter).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tongban.http_metrics import RequestMetrics, install_request_metrics, metrics_blueprint
from tongban.http_shell import install_problem_handlers
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, NotFound, StoreUnavailable
from tongban.primitives.jws import jwks
from tongban.primitives.metrics_auth import MetricsCredential
from tongban.primitives.wire import CosignRequest

from .protocol import AdapterCore
from .witness import Witness

__all__ = [
    "MAX_BODY",
    "CertificateCollector",
    "CertificateReport",
    "SourceCollector",
    "create_app",
    "install_adapter_metrics",
    "public_health",
]

MAX_BODY = 64 * 1024  # a signed batch of 500 subjects is ~25 KiB
log = logging.getLogger("tongban.adapter")


class CertificateReport(Protocol):
    """What ``tls_status`` returns (tongban.pki.CertificateStatus is one)."""

    @property
    def subject(self) -> str: ...

    @property
    def not_after(self) -> datetime: ...

    @property
    def expires_soon(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


TLSStatus = Callable[[], CertificateReport | None]


def create_app(
    core: AdapterCore | None,
    witness: Witness | None = None,
    *,
    tls_status: TLSStatus | None = None,
    metrics: MetricsCredential | None = None,
) -> Flask:
    """The adapter's app. ``tls_status`` (e.g. ``tongban.pki.status_source(cert)``) puts
    the TLS certificate's expiry in ``/healthz`` and ``/metrics``; ``metrics`` is who may
    read ``/metrics`` (``None``: nobody). Without a ``core``, a witness-only app: it
    cosigns checkpoints and answers no predicate (404 on those routes)."""
    if core is None and witness is None:
        raise ValueError("an adapter app needs a core, a witness or both")
    name = core.name if core is not None else witness.name  # type: ignore[union-attr]
    app = Flask(f"tongban.adapter.{name}")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["tongban.adapter"] = core  # for whoever closes its source (wsgi, tests)

    install_problem_handlers(app, MAX_BODY, log)
    if core is not None:
        install_adapter_metrics(app, core, tls_status=tls_status, credential=metrics)
        _predicate_routes(app, core, tls_status)
    _witness_routes(app, witness)
    return app


def _predicate_routes(app: Flask, core: AdapterCore, tls_status: TLSStatus | None) -> None:

    @app.post("/v1/evaluate")
    def evaluate() -> Response:
        if request.mimetype not in ("application/jose", "text/plain"):
            raise BadRequest("body: expected a compact JWS (application/jose)")
        token = request.get_data(cache=False, as_text=False)
        try:
            text = token.decode("ascii").strip()
        except UnicodeDecodeError:
            raise BadRequest("body: expected a compact JWS (application/jose)") from None
        return Response(core.handle(text), 200, mimetype="application/jose")

    @app.get("/v1/predicates")
    def predicates() -> Response:
        source = core.evaluator
        return jsonify(department=source.name, title=source.title, predicates=source.describe())

    @app.get("/.well-known/jwks.json")
    def keys() -> Response:
        return jsonify(jwks({core.kid: core.key.public_key}))

    @app.get("/healthz")
    def healthz() -> Response:
        # 200 when the source can be read; 503 store-unavailable (problem+json carrying
        # the same members, "ready": false) when it cannot: the adapter keeps running and
        # answers "unknown" until its source is back (docs/departments.md).
        body = public_health(core.health())
        report = tls_status() if tls_status is not None else None
        if report is not None:
            body = {**body, "certificate": report.to_json()}
        if not body["ready"]:
            extra = {k: v for k, v in body.items() if k != "status"}
            raise StoreUnavailable(f"{core.name} source is not reachable", **extra)
        return jsonify(body)


def _witness_routes(app: Flask, witness: Witness | None) -> None:
    @app.post("/v1/witness/cosign")
    def cosign() -> Response:
        if witness is None:
            raise NotFound("this adapter is not a witness")
        body = parse_body(CosignRequest, request.get_json())
        signature = witness.cosign(body.note, body.from_size, body.proof())
        return jsonify(cosignature=signature.line())

    @app.get("/v1/witness/checkpoint")
    def witnessed() -> Response:
        """What this witness last cosigned (a size and a root, signed): an auditor's
        check that the gateway's log was not cut below it."""
        if witness is None:
            raise NotFound("this adapter is not a witness")
        note = witness.last_checkpoint()
        if note is None:
            raise NotFound("this witness has cosigned nothing yet")
        return jsonify(note=note)


def public_health(body: dict[str, Any]) -> dict[str, Any]:
    """The adapter's health as ``/healthz`` shows it, to anyone who reaches the port: the
    source's defect count is left out. It grows by one when an answer hits a defect of the
    department file, so two reads around one request would tell that the request's
    subject was answered ``unknown``; it is in the metrics, behind the metrics token."""
    source = body.get("source")
    if isinstance(source, dict) and "defects" in source:
        body = {**body, "source": {k: v for k, v in source.items() if k != "defects"}}
    return body


# --- metrics ------------------------------------------------------------------------------

# The gateway's buckets (gateway/metrics.py): an answer is one of its department calls.


class SourceCollector(Collector):
    """The adapter's source, read at each scrape: its defect count (a managed
    :class:`~tongban.adapters.evaluate.Evaluator` and a
    :class:`~tongban.adapters.file_source.FileSource` both count them) and whether it
    answers a probe now (what ``/healthz`` reports as ``ready``)."""

    def __init__(self, core: AdapterCore) -> None:
        self.core = core

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        defects = CounterMetricFamily(
            "tongban_department_file_defects",
            "Answers the department file's SQL returned in an undeclared shape (several "
            "rows, text, ...): each was answered unknown and logged without the subject.",
            labels=["department"],
        )
        ready = GaugeMetricFamily(
            "tongban_department_source_ready",
            "1 if the department's source answers a probe now, 0 if it does not (the "
            "adapter then answers unknown).",
            labels=["department", "kind"],
        )
        return defects, ready

    def describe(self) -> Iterator[Metric]:
        yield from self._families()  # without samples: registering probes nothing

    def collect(self) -> Iterator[Metric]:
        defects, ready = self._families()
        source, name = self.core.evaluator, self.core.name
        count = getattr(source, "defects", None)
        defects.add_metric([name], math.nan if count is None else float(count))
        try:
            up = bool(self.core.health()["ready"])
        except Exception:  # health() does not raise; a scrape must not fail if it did
            up = False
        ready.add_metric([name, source.kind], 1.0 if up else 0.0)
        yield defects
        yield ready


class CertificateCollector(Collector):
    """The adapter's TLS certificate, read at each scrape: its end as a Unix time and
    whether it is within 30 days of it (the label ``certificate`` is its CN: the
    department's name)."""

    def __init__(self, tls_status: TLSStatus) -> None:
        self.tls_status = tls_status

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        not_after = GaugeMetricFamily(
            "tongban_tls_certificate_not_after_seconds",
            "When the adapter's TLS certificate stops being valid (Unix time).",
            labels=["certificate"],
        )
        soon = GaugeMetricFamily(
            "tongban_tls_certificate_expires_soon",
            "1 if the adapter's TLS certificate ends within 30 days (or has ended): renew "
            "it with `tongban pki issue NAME --renew`.",
            labels=["certificate"],
        )
        return not_after, soon

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        not_after, soon = self._families()
        try:
            report = self.tls_status()
        except Exception:  # a scrape must not fail for an unreadable certificate
            report = None
        if report is not None:
            not_after.add_metric([report.subject], report.not_after.timestamp())
            soon.add_metric([report.subject], 1.0 if report.expires_soon else 0.0)
        yield not_after
        yield soon


def install_adapter_metrics(
    app: Flask,
    core: AdapterCore,
    *,
    tls_status: TLSStatus | None = None,
    credential: MetricsCredential | None = None,
) -> CollectorRegistry:
    """Count and time every request of ``app`` by route template and status, export the
    source's defects and readiness (:class:`SourceCollector`) and serve them at
    ``GET /metrics`` to the holder of ``credential`` (none: every scrape refused), all on
    a new registry (returned): several adapters in one process (the tests, the in-process
    topology) do not share counters."""
    registry = CollectorRegistry(auto_describe=True)
    install_request_metrics(app, RequestMetrics.on(registry))
    registry.register(SourceCollector(core))
    if tls_status is not None:
        registry.register(CertificateCollector(tls_status))
    app.register_blueprint(metrics_blueprint(credential or MetricsCredential(None), registry))
    return registry
