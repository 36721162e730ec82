"""/metrics: Prometheus text format, route templates (never raw paths), the pipeline's
counters, and no label value that could be personal data."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tongban.gateway.metrics import (
    AUDIT_APPENDS,
    CHECKS,
    DEPARTMENT_CALLS,
    REDACTED,
    REGISTRY,
    install_metrics,
    safe_label,
    track_audit,
)
from tongban.primitives.idnumber import make_id

from .test_openapi import Served, build_served

CHILD = make_id("110105", dt.date(2018, 3, 4), 12)
ADULT = make_id("110105", dt.date(1990, 5, 17), 123)
# Anything that looks like a GB 11643 number, a phone number, or a long digit run.
PERSONAL = re.compile(r"[0-9]{11,}|[0-9]{17}[0-9Xx]")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = build_served(tmp_path_factory.mktemp("metrics"))
    yield s
    s.gateway.close()


def _scrape(served: Served, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    resp = served.client.get("/metrics", headers=headers)
    assert resp.status_code == 200
    return resp.headers["Content-Type"], resp.get_data(as_text=True)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _value(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture(scope="module")
def traffic(served: Served) -> dict[str, Any]:
    """A few requests that carry ID numbers in bodies, paths and query strings."""
    edu = served.auth("edu-bureau")
    before = {
        "consent": _value(
            "tongban_http_requests_total",
            method="GET",
            route="/v1/consents/<consent_id>",
            status="404",
        ),
        "appends": _value("tongban_audit_appends_total"),
    }
    body = {
        "subject": {"id_number": CHILD},
        "claim": "birth_registered",
        "purpose": "school_enrollment",
    }
    assert served.client.post("/v1/checks", json=body, headers=edu).status_code == 200
    bad = {**body, "subject": {"id_number": CHILD[:-1] + ("1" if CHILD[-1] == "0" else "0")}}
    assert served.client.post("/v1/checks", json=bad, headers=edu).status_code == 422
    me = served.citizen(ADULT)
    assert served.client.get(f"/v1/consents/{ADULT}", headers=me).status_code == 404
    assert served.client.get(f"/v1/consents/{'A' * 22}", headers=me).status_code == 404
    assert served.client.get(f"/people/{ADULT}").status_code == 404
    assert served.client.get(f"/v1/audit/entries?subject={ADULT}").status_code == 401
    assert served.client.get("/healthz").status_code == 200
    return before


def test_exposition_is_prometheus_text(served: Served, traffic: dict[str, Any]):
    content_type, text = _scrape(served)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "tongban_http_requests",
        "tongban_http_request_duration_seconds",
        "tongban_checks",
        "tongban_department_calls",
        "tongban_audit_appends",
        "tongban_audit_tree_size",
        "tongban_audit_checkpoint_size",
    } <= names


def test_openmetrics_when_asked(served: Served):
    content_type, text = _scrape(served, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_requests_are_counted_by_route_template(served: Served, traffic: dict[str, Any]):
    _, text = _scrape(served)
    routes = {
        labels["route"]
        for name, labels, _ in _samples(text)
        if name == "tongban_http_requests_total"
    }
    assert {"/v1/checks", "/v1/consents/<consent_id>", "/healthz", "<unmatched>"} <= routes
    assert all(r.startswith(("/", "<")) for r in routes)
    now = _value(
        "tongban_http_requests_total", method="GET", route="/v1/consents/<consent_id>", status="404"
    )
    assert now - traffic["consent"] == 2
    assert (
        _value("tongban_http_requests_total", method="POST", route="/v1/checks", status="422") >= 1
    )
    assert (
        _value("tongban_http_request_duration_seconds_count", method="POST", route="/v1/checks")
        >= 2
    )
    assert (
        _value(
            "tongban_http_request_duration_seconds_bucket",
            method="GET",
            route="/healthz",
            le="+Inf",
        )
        >= 1
    )


def test_no_label_value_looks_like_personal_data(served: Served, traffic: dict[str, Any]):
    CHECKS.labels("edu-bureau", CHILD, "school_enrollment", "yes").inc()
    DEPARTMENT_CALLS.labels(ADULT, "true").inc()
    _, text = _scrape(served)
    values = [v for _, labels, _ in _samples(text) for v in labels.values()]
    assert values
    assert [v for v in values if PERSONAL.search(v)] == []
    assert CHILD not in text and ADULT not in text and ADULT[:17] not in text


def test_pipeline_counters(served: Served):
    before = _value(
        "tongban_checks_total",
        requester="edu-bureau",
        claim="married",
        purpose="maternity_allowance",
        result="no",
    )
    CHECKS.labels("edu-bureau", "married", "maternity_allowance", "no").inc()
    after = _value(
        "tongban_checks_total",
        requester="edu-bureau",
        claim="married",
        purpose="maternity_allowance",
        result="no",
    )
    assert after - before == 1
    calls = _value("tongban_department_calls_total", department="police", outcome="timeout")
    DEPARTMENT_CALLS.labels("police", "timeout").inc(2)
    assert (
        _value("tongban_department_calls_total", department="police", outcome="timeout") - calls
        == 2
    )
    appends = _value("tongban_audit_appends_total")
    AUDIT_APPENDS.inc()
    assert _value("tongban_audit_appends_total") - appends == 1


def test_audit_gauges_read_the_log_at_scrape_time(served: Served, traffic: dict[str, Any]):
    audit = served.gateway.audit
    assert audit is not None
    track_audit(audit)  # the app under test may have been built before another one
    assert _value("tongban_audit_tree_size") == audit.size > 0
    if served.gateway.checkpointer is not None:
        note = served.gateway.checkpointer.checkpoint(force=True)
        assert _value("tongban_audit_checkpoint_size") == note.checkpoint.size


def test_audit_gauges_without_a_log_are_nan():
    class Broken:
        size = 0

        def latest_checkpoint(self) -> None:
            raise RuntimeError("store down")

    track_audit(Broken())
    assert math.isnan(REGISTRY.get_sample_value("tongban_audit_checkpoint_size") or 0.0)
    track_audit(None)
    assert math.isnan(REGISTRY.get_sample_value("tongban_audit_tree_size") or 0.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("edu-bureau", "edu-bureau"),
        ("checks:batch", "checks:batch"),
        ("maternity_insurance_active", "maternity_insurance_active"),
        (503, "503"),
        (CHILD, REDACTED),
        ("13800138000", REDACTED),  # a mobile number
        ("client-" + "1" * 11, REDACTED),
        ("has space", REDACTED),
        ("", REDACTED),
        ("x" * 65, REDACTED),
        (None, REDACTED),
        (True, REDACTED),
        ("通办", REDACTED),
    ],
)
def test_safe_label(value: object, expected: str):
    assert safe_label(value) == expected


def test_install_without_endpoint_only_adds_hooks():
    app = Flask("metrics-test")

    @app.get("/ping/<name>")
    def ping(name: str) -> str:
        return "pong"

    assert install_metrics(app, endpoint=False) is None
    assert "metrics" not in app.blueprints
    before = _value("tongban_http_requests_total", method="GET", route="/ping/<name>", status="200")
    assert app.test_client().get("/ping/13800138000").status_code == 200
    assert (
        _value("tongban_http_requests_total", method="GET", route="/ping/<name>", status="200")
        - before
        == 1
    )
    assert app.test_client().get("/metrics").status_code == 404
