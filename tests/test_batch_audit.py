"""Finding 9: a batch of invalid ID numbers cannot flood the audit log.

The attack: ``POST /v1/checks/batch`` with 10,000 strings that are not ID numbers, twice.
Before, each wrote 10,000 entries (15.7 MB of ``audit.db`` for two). Now the invalid subjects
of a batch share one summary entry (how many, and why), only the subjects that reached
policy get an entry of their own, and the rate limit still charges every subject the batch
named. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.idnumber import make_id

from .hostile_harness import ADULT, OTHER_ADULT, Hostile, build_hostile

BATCH = 10_000
ID_SHAPED = re.compile(r"\d{17}[\dXx]|\d{15}")


def _gateway(tmp_path: Path, gateway_stores: dict[str, str], **settings: Any) -> Hostile:
    limits = {"rate_requester_burst": 25_000, "rate_requester_per_second": 0.01}
    return build_hostile(tmp_path, **{**limits, **gateway_stores, **settings})


@pytest.fixture
def gw(tmp_path: Path, gateway_stores: dict[str, str]) -> Iterator[Hostile]:
    h = _gateway(tmp_path, gateway_stores)
    yield h
    h.close()


def _garbage(n: int) -> list[dict[str, str]]:
    """``n`` subjects that are not ID numbers, for several different reasons."""
    good = make_id("110105", dt.date(1990, 5, 17), 1)
    bad_check = good[:-1] + ("0" if good[-1] != "0" else "1")
    shapes = (
        "{i:05d}",  # too short
        bad_check,  # a wrong check character
        "11010519901317{j:03d}X",  # month 13
        "abcdefghijklmnopqr",  # not digits
    )
    return [{"id_number": shapes[i % len(shapes)].format(i=i, j=i % 1000)} for i in range(n)]


def _batch(h: Hostile, subjects: list[dict[str, str]]) -> Any:
    body = {"claim": "birth_registered", "purpose": "school_enrollment", "subjects": subjects}
    return h.client.post("/v1/checks/batch", json=body, headers=h.auth("edu-bureau"))


def _entries(h: Hostile, since: int) -> list[dict[str, Any]]:
    assert h.gateway.audit is not None
    rows, _ = h.gateway.audit.entries({}, cursor=since - 1, limit=500, newest_first=False)
    return [r.entry for r in rows]


def test_ten_thousand_invalid_subjects_are_one_entry(gw: Hostile) -> None:
    before = gw.audit_size()
    resp = _batch(gw, _garbage(BATCH))
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    results = resp.get_json()["results"]
    assert len(results) == BATCH and {r["result"] for r in results} == {"invalid"}
    assert gw.audit_size() == before + 1
    (summary,) = _entries(gw, before)
    assert summary["kind"] == "check" and summary["result"] == "invalid"
    assert summary["error"] == "invalid-id-number"
    counted = summary["batch_invalid"]
    assert counted["count"] == BATCH
    assert sum(counted["reasons"].values()) == BATCH and len(counted["reasons"]) >= 3
    # Every invalid subject points at the summary; the entry names no subject at all.
    assert {r["audit_index"] for r in results} == {before}
    assert {r["reason"] for r in results} == set(counted["reasons"])
    assert not ID_SHAPED.search(str(summary))


def test_only_subjects_that_reached_policy_have_entries_of_their_own(gw: Hostile) -> None:
    before = gw.audit_size()
    subjects = [{"id_number": ADULT}, {"id_number": "123"}, {"id_number": OTHER_ADULT},
                {"id_number": "x" * 18}]  # fmt: skip
    resp = _batch(gw, subjects)
    assert resp.status_code == 200
    results = resp.get_json()["results"]
    assert [r["result"] for r in results] == ["undetermined", "invalid", "undetermined", "invalid"]
    entries = _entries(gw, before)
    assert len(entries) == 3  # two subjects and one summary
    items = [e for e in entries if "batch_item" in e]
    assert sorted(e["batch_item"] for e in items) == [0, 2]
    (summary,) = [e for e in entries if "batch_invalid" in e]
    assert summary["batch_invalid"]["count"] == 2
    assert results[1]["audit_index"] == results[3]["audit_index"] == before + 2
    assert len({results[0]["audit_index"], results[2]["audit_index"], before + 2}) == 3
    # The citizens that were asked about see the check; the summary is nobody's.
    seen = gw.client.get("/v1/me/access-log", headers=gw.citizen(ADULT)).get_json()["entries"]
    assert [e["index"] for e in seen] == [results[0]["audit_index"]]


def test_a_batch_of_valid_numbers_writes_no_summary(gw: Hostile) -> None:
    before = gw.audit_size()
    resp = _batch(gw, [{"id_number": ADULT}, {"id_number": OTHER_ADULT}])
    assert resp.status_code == 200
    assert len(_entries(gw, before)) == 2
    assert not [e for e in _entries(gw, before) if "batch_invalid" in e]


def test_two_garbage_batches_hardly_grow_the_audit_file(tmp_path: Path) -> None:
    h = _gateway(tmp_path, {})
    try:
        path = tmp_path / "audit.db"
        _batch(h, _garbage(10)).get_json()  # the file and its first pages exist
        size = path.stat().st_size + sum(
            p.stat().st_size for p in tmp_path.glob("audit.db-*") if p.is_file()
        )
        for _ in range(2):
            assert _batch(h, _garbage(BATCH)).status_code == 200
        grown = path.stat().st_size + sum(
            p.stat().st_size for p in tmp_path.glob("audit.db-*") if p.is_file()
        )
        # Before: 15.7 MB for the two batches. Two summaries are a few kilobytes.
        assert grown - size < 256 * 1024, grown - size
    finally:
        h.close()


def test_the_rate_limit_charges_every_subject_named(
    tmp_path: Path, gateway_stores: dict[str, str]
) -> None:
    h = _gateway(tmp_path, gateway_stores, rate_requester_burst=15_000)
    try:
        before = h.audit_size()
        assert _batch(h, _garbage(BATCH)).status_code == 200
        refused = _batch(h, _garbage(BATCH))
        body = refused.get_json()
        assert refused.status_code == 429, body
        assert body["type"] == PROBLEM_BASE + "rate-limited" and body["limit"] == "requester"
        assert h.audit_size() == before + 1  # the refused batch wrote nothing
        # What is left of the budget still buys a small batch.
        assert _batch(h, [{"id_number": ADULT}]).status_code == 200
    finally:
        h.close()


def test_a_batch_refused_by_policy_is_audited_and_counted_like_a_check(gw: Hostile) -> None:
    """Checker.batch shares check's denial: one entry (no subject), the problem carries
    its index, and every subject of the batch is counted as a denied check (before, the
    batch's branch skipped the metric)."""
    from tongban.gateway.metrics import REGISTRY

    def denied() -> float:
        labels = {"claim": "birth_registered", "purpose": "underwriting", "outcome": "denied"}
        return REGISTRY.get_sample_value("tongban_checks_total", labels) or 0.0

    counted = denied()
    before = gw.audit_size()
    subjects = [{"id_number": ADULT}, {"id_number": OTHER_ADULT}, {"id_number": "garbage"}]
    body = {"claim": "birth_registered", "purpose": "underwriting", "subjects": subjects}
    resp = gw.client.post("/v1/checks/batch", json=body, headers=gw.auth("insurer-a"))
    assert resp.status_code == 403, resp.get_data(as_text=True)
    problem = resp.get_json()
    assert problem["type"] == PROBLEM_BASE + "policy-denied"
    assert gw.audit_size() == before + 1 and problem["audit_index"] == before
    (entry,) = _entries(gw, before)
    assert entry["result"] == "denied" and entry["error"] == "policy-denied"
    assert entry["batch"] == len(subjects)
    assert denied() == counted + len(subjects)
