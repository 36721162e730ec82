"""The outside tester's attack on ``/metrics``: scrape, ask one check, scrape again, and read
the answer off the difference. Against a whole gateway over real department stores (SQLite
and PostgreSQL): around a "yes", several "no"s (each failing on whichever condition it
fails) and an "undetermined" (a quarantined record), every scrape differs from the one
before it in the same way, whether read with the metrics token or without it, and so do the
public ``/healthz`` reads. Beyond totals, nothing in them depends on the answer."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.metrics_auth import TOKEN_FILE

from .conftest import Generated
from .gateway_harness import Harness, build_harness

CLAIM, REQUESTER, PURPOSE = "birth_registered", "edu-bureau", "school_enrollment"
WORD = {True: "yes", False: "no", None: "undetermined"}
# Timing, not content: how long a request took falls in some bucket whatever its answer.
TIMING = (
    "tongban_http_request_duration_seconds_bucket",
    "tongban_http_request_duration_seconds_sum",
)
Sample = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def harness(
    population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:
    h = build_harness(tmp_path_factory.mktemp("disclosure"), population.urls, party_keys)
    yield h
    h.close()


@pytest.fixture(scope="module")
def subjects(population: Generated) -> dict[str, list[str]]:
    """ID numbers by the claim's true answer: one yes, several no, one undetermined."""
    by_word: dict[str, list[str]] = {"yes": [], "no": [], "undetermined": []}
    for row in population.subjects():
        claims = row["claims"]
        assert isinstance(claims, dict)
        by_word[WORD[claims[CLAIM]]].append(str(row["id_number"]))
    rng = random.Random(7)
    picked = {"yes": rng.sample(by_word["yes"], 1), "no": rng.sample(by_word["no"], 6)}
    assert by_word["undetermined"], "the population has no quarantined record to ask about"
    picked["undetermined"] = rng.sample(by_word["undetermined"], 1)
    return picked


def _token(h: Harness) -> str:
    return (h.settings.keys_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()


def _samples(text: str) -> dict[Sample, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _observe(h: Harness) -> dict[str, Any]:
    """Everything a scraper can read: the metrics with the token, and without any
    credential ``/metrics`` and ``/healthz``."""
    inside = h.client.get("/metrics", headers={"Authorization": f"Bearer {_token(h)}"})
    assert inside.status_code == 200
    outside = h.client.get("/metrics")
    assert outside.status_code == 401
    refused = outside.get_json()
    assert refused.pop("type") == PROBLEM_BASE + "metrics-unauthenticated"
    refused.pop("instance")  # the request's own id
    health = h.client.get("/healthz").get_json()
    for report in health["departments"].values():
        report.pop("latency_ms", None)  # timing
    return {
        "metrics": _samples(inside.get_data(as_text=True)),
        "refused": (outside.status_code, refused, outside.get_data(as_text=True).count("tongban_")),
        "health": health,
    }


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = set(before["metrics"]) | set(after["metrics"])
    moved = {
        k: after["metrics"].get(k, 0.0) - before["metrics"].get(k, 0.0)
        for k in keys
        # Timing, and when a series was first seen (a timestamp), are not content.
        if k[0] not in TIMING
        and not k[0].endswith("_created")
        and not _same(after["metrics"].get(k), before["metrics"].get(k))
    }
    health = {
        k: (before["health"].get(k), v)
        for k, v in after["health"].items()
        if before["health"].get(k) != v
    }
    return {
        "metrics": moved,
        "refused": (before["refused"], after["refused"]),
        "health": health,
    }


def _ask(h: Harness, subject: str) -> str:
    body = {"subject": {"id_number": subject}, "claim": CLAIM, "purpose": PURPOSE}
    resp = h.check(REQUESTER, body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return str(resp.get_json()["result"])


def test_a_scrape_diff_around_a_check_does_not_tell_its_answer(
    harness: Harness, subjects: dict[str, list[str]]
) -> None:
    h = harness
    _ask(h, subjects["yes"][0])  # every series a check touches now exists
    diffs: dict[str, list[dict[str, Any]]] = {"yes": [], "no": [], "undetermined": []}
    order = [*subjects["no"][:3], subjects["undetermined"][0], subjects["yes"][0],
             *subjects["no"][3:]]  # fmt: skip
    before = _observe(h)
    for subject in order:
        answer = _ask(h, subject)
        after = _observe(h)
        diffs[answer].append(_diff(before, after))
        before = after
    assert {w: len(d) for w, d in diffs.items()} == {"yes": 1, "no": 6, "undetermined": 1}
    reference = diffs["yes"][0]
    # The difference is a total count: one more answered check, department calls, audit
    # entry and request; never an answer, a department's value or a requester.
    moved = {name: dict(labels) for (name, labels) in reference["metrics"]}
    assert moved["tongban_checks_total"] == {
        "claim": CLAIM,
        "purpose": PURPOSE,
        "outcome": "answered",
    }
    assert reference["metrics"][("tongban_audit_tree_size", ())] == 1
    for labels in [dict(labels) for (name, labels) in reference["metrics"]]:
        assert not {"requester", "result"} & set(labels)
        assert not {"yes", "no", "undetermined", "true", "false", "unknown"} & set(
            labels.values()
        ), labels
    for word, found in diffs.items():
        for diff in found:
            assert diff["metrics"] == reference["metrics"], word
            assert diff["refused"] == reference["refused"], word
            assert diff["health"].keys() == reference["health"].keys(), word
            assert diff["health"].get("departments") == reference["health"].get("departments")


def test_metrics_without_the_token_are_refused(harness: Harness) -> None:
    bad = ["", "Bearer", "Bearer ", "Basic bWV0cmljczp4", "bearer x", "Bearer a b"]
    for headers in [{}, *({"Authorization": value} for value in bad)]:
        resp = harness.client.get("/metrics", headers=headers)
        assert resp.status_code == 401, headers
    wrong = {"Authorization": "Bearer " + _token(harness)[::-1]}
    resp = harness.client.get("/metrics", headers=wrong)
    assert resp.status_code == 401
    assert resp.mimetype == "application/problem+json"
    assert resp.get_json()["type"] == PROBLEM_BASE + "metrics-unauthenticated"
    officer = harness.auth("privacy-officer")  # a valid OAuth token is not the metrics token
    assert harness.client.get("/metrics", headers=officer).status_code == 401
