"""/metrics: the operator's metrics token or a 401, Prometheus text format, route templates
(never raw paths), the pipeline's counters without answers or requesters, and no label
value that could be personal data."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from pathlib import Path
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
    count_check,
    count_department_call,
    install_metrics,
    safe_label,
    track_audit,
)
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.idnumber import make_id
from tongban.primitives.metrics_auth import (
    TOKEN_FILE,
    MetricsCredential,
    MetricsUnauthenticated,
    ensure_metrics_token,
)

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


def metrics_auth(served: Served) -> dict[str, str]:
    """The operator's bearer header: the token the gateway made in its keys directory."""
    token = (served.settings.keys_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"}


def _scrape(served: Served, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    resp = served.client.get("/metrics", headers={**headers, **metrics_auth(served)})
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
    assert (
        served.client.post("/v1/audit/entries/search", json={"subject": ADULT}).status_code == 401
    )
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
    CHECKS.labels(CHILD, "school_enrollment", "answered").inc()
    DEPARTMENT_CALLS.labels(ADULT, "true").inc()
    _, text = _scrape(served)
    values = [v for _, labels, _ in _samples(text) for v in labels.values()]
    assert values
    assert [v for v in values if PERSONAL.search(v)] == []
    assert CHILD not in text and ADULT not in text and ADULT[:17] not in text


def test_pipeline_counters_count_outcomes_never_answers(served: Served):
    def checks(outcome: str) -> float:
        return _value(
            "tongban_checks_total",
            claim="married",
            purpose="maternity_allowance",
            outcome=outcome,
        )

    before = {o: checks(o) for o in ("answered", "denied", "invalid", "rate_limited")}
    for word in ("yes", "no", "undetermined", "something-new"):
        count_check("married", "maternity_allowance", word)
    count_check("married", "maternity_allowance", "denied", 2)
    count_check("married", "maternity_allowance", "rate_limited")
    assert checks("answered") - before["answered"] == 4
    assert checks("denied") - before["denied"] == 2
    assert checks("rate_limited") - before["rate_limited"] == 1
    assert checks("invalid") == before["invalid"]
    for answer in ("yes", "no", "undetermined", "something-new"):
        assert (
            REGISTRY.get_sample_value(
                "tongban_checks_total",
                {"claim": "married", "purpose": "maternity_allowance", "outcome": answer},
            )
            is None
        )

    def calls(outcome: str) -> float:
        return _value("tongban_department_calls_total", department="police", outcome=outcome)

    answered, timeouts = calls("answered"), calls("timeout")
    for value in ("true", "false", "unknown"):
        count_department_call("police", value)
    count_department_call("police", "timeout")
    count_department_call("police", "timeout")
    assert calls("answered") - answered == 3 and calls("timeout") - timeouts == 2
    for value in ("true", "false", "unknown"):
        assert calls(value) == 0.0
    appends = _value("tongban_audit_appends_total")
    AUDIT_APPENDS.inc()
    assert _value("tongban_audit_appends_total") - appends == 1


def test_metrics_refuse_a_request_without_the_token(served: Served):
    token = metrics_auth(served)["Authorization"].removeprefix("Bearer ")
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * len(token)},
        {"Authorization": "Bearer " + token[:-1]},
        {"Authorization": "Bearer " + token + "x"},
        {"Authorization": "Basic " + token},
        {"Authorization": served.auth("privacy-officer")["Authorization"]},  # an OAuth token
    ):
        resp = served.client.get("/metrics", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.mimetype == "application/problem+json"
        body = resp.get_json()
        assert body["type"] == PROBLEM_BASE + "metrics-unauthenticated"
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tongban-metrics"'
        assert "tongban_" not in resp.get_data(as_text=True)
        assert token not in resp.get_data(as_text=True)
    assert served.client.get("/metrics", headers=metrics_auth(served)).status_code == 200


def test_a_gateway_without_a_token_serves_no_metrics():
    app = Flask("metrics-without-token")
    app.register_error_handler(
        MetricsUnauthenticated, lambda exc: (exc.to_problem(), exc.status, exc.response_headers())
    )
    install_metrics(app)
    resp = app.test_client().get("/metrics", headers={"Authorization": "Bearer " + "a" * 43})
    assert resp.status_code == 401
    assert "metrics.token" in resp.get_json()["detail"]


def test_the_token_file_is_made_once_private_and_kept(tmp_path: Path):
    keys = tmp_path / "keys"
    first = ensure_metrics_token(keys)
    path = keys / TOKEN_FILE
    token = path.read_text(encoding="utf-8").strip()
    assert len(token) >= 43 and path.stat().st_mode & 0o777 == 0o600
    second = ensure_metrics_token(keys)  # a second process: the same token, not a new one
    assert path.read_text(encoding="utf-8").strip() == token
    for credential in (first, second, MetricsCredential.from_file(path)):
        credential.check(f"Bearer {token}")
        credential.check(f"bearer {token}")
        with pytest.raises(MetricsUnauthenticated):
            credential.check(f"Bearer {token[:-1]}")
    assert not MetricsCredential.from_file(tmp_path / "absent").configured
    with pytest.raises(ValueError, match="at least"):
        MetricsCredential("short")


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
