"""Schemathesis against /openapi.json of a whole in-process gateway (WSGI, no server): over
10,000 generated requests, valid and invalid (positive and negative generation), with real
tokens for each operation's security scheme, and no 5xx, no response outside the
documented status codes, media types and schemas.

Reproducible: derandomized Hypothesis (the same cases every run), no example database.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from flask import Flask, jsonify
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .hostile_harness import ADULT, Hostile, build_hostile

EXAMPLES_PER_MODE = 330  # x 2 modes x ~16 operations with inputs, + ~7 without: > 10,000
MIN_REQUESTS = 10_000
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)
SCOPE_CLIENT = {
    "checks": "edu-bureau",
    "checks:batch": "edu-bureau",
    "audit:read": "privacy-officer",
    "admin": "admin-1",
    "statistics": "analyst",
    "federation": "fed-admin",
}


def _headers(h: Hostile, raw: dict[str, Any]) -> dict[str, str]:
    for requirement in raw.get("security") or []:
        if "oauth2" in requirement:
            scopes = requirement["oauth2"]
            return h.auth(SCOPE_CLIENT[scopes[0]] if scopes else "edu-bureau")
        if "citizenToken" in requirement:
            return h.citizen(ADULT)
        if "clientSecretBasic" in requirement:
            return h.basic("edu-bureau")
    return {}


def _takes_input(raw: dict[str, Any]) -> bool:
    return bool(raw.get("parameters") or raw.get("requestBody"))


def _fuzz_operation(
    op: Any,
    mode: GenerationMode,
    auth: dict[str, str],
    examples: int,
    sent: Counter[str],
    failures: dict[str, str],
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent[op.label] += 1
        prefix = f"{op.label} [{mode.value}]"
        try:
            response = case.call(headers=auth)
        except BaseExceptionGroup as exc:  # the WSGI transport itself reports a 5xx
            failures.setdefault(f"{prefix} not_a_server_error", f"{exc!s:.300}")
            return
        for check in CHECKS:
            try:
                case.validate_response(response, checks=[check], headers=auth)
            except BaseExceptionGroup as exc:  # schemathesis: a FailureGroup
                failures.setdefault(
                    f"{prefix} {check.__name__}",
                    f"{response.status_code} {response.text[:200]!r}: {exc!s:.300}",
                )

    run()


def fuzz(
    app: Flask, examples: int, headers: Any = lambda raw: {}
) -> tuple[Counter[str], dict[str, str]]:
    """Run every operation of ``app``'s /openapi.json; returns requests per operation and
    the first failure per (operation, mode, check)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    sent: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        op = cast(Any, result).ok()
        raw = op.definition.raw
        modes = [GenerationMode.POSITIVE]
        if "{" in op.path or _takes_input(raw):
            modes.append(GenerationMode.NEGATIVE)  # nothing to break in an input-less call
        for mode in modes:
            _fuzz_operation(op, mode, headers(raw), examples, sent, failures)
    return sent, failures


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    h = build_hostile(tmp_path_factory.mktemp("schemathesis"))
    yield h
    h.close()


@pytest.mark.slow
# About 90 s on a quiet 2-core machine; the global 300 s is too tight when CI shares it.
@pytest.mark.timeout(900)
def test_ten_thousand_generated_requests_conform(gw: Hostile):
    started = time.monotonic()
    sent, failures = fuzz(gw.app, EXAMPLES_PER_MODE, lambda raw: _headers(gw, raw))
    elapsed = time.monotonic() - started

    print(f"schemathesis: {sum(sent.values())} requests in {elapsed:.1f} s", dict(sent))
    assert failures == {}, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    assert sum(sent.values()) >= MIN_REQUESTS, (sum(sent.values()), elapsed)
    assert len(sent) >= 20  # every operation of the document was exercised
    # The tokens were real: authenticated operations were reached, not all refused at 401.
    assert gw.audit_size() > 0


def test_the_checks_catch_a_lying_route(tmp_path: Path):
    """The harness can fail: a route answering outside its schema, or with a 500, is
    reported by exactly the checks this suite relies on."""
    h = build_hostile(tmp_path)
    try:
        app = h.app
        # "sleeping" is not in the document's enumeration.
        app.view_functions["operations.healthz"] = lambda: jsonify(status="sleeping")

        def broken_asset(asset: str) -> Any:
            raise RuntimeError("boom")

        app.view_functions["docs.docs_asset"] = broken_asset
        _, failures = fuzz(app, 5)
    finally:
        h.close()
    assert any(k.startswith("GET /healthz") and "response_schema" in k for k in failures)
    assert any(k.startswith("GET /docs/{asset}") and "not_a_server_error" in k for k in failures)
