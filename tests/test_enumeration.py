"""Finding 10: a requester cannot walk an enumerated parameter to learn an attribute.

The attack: ``household_in_district`` asked about one subject for each of the 8 districts
in turn; the one "yes" is the household's district. The catalog limits ``district`` to one
value per (requester, subject) per 30 days, so the walk is refused at the second district
with 403 ``parameter-enumeration``, audited, before any department is asked. On SQLite and
on PostgreSQL, with the record shared by two gateways on one database (two workers).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tongban.adapters.departments import DEPARTMENTS
from tongban.gateway.catalog import Catalog
from tongban.gateway.enumeration import (
    DEFAULT_LIMIT,
    EnumerationGuard,
    ParamLimit,
    param_asks,
)
from tongban.primitives.errors import PROBLEM_BASE

from .hostile_harness import ADULT, OTHER_ADULT, Hostile, build_hostile

CLAIM = "household_in_district"
DISTRICTS = ["150102", "150105", "150203", "150403", "150602", "150622", "110105", "110108"]


@pytest.fixture
def gw(tmp_path: Path, gateway_stores: dict[str, str]) -> Iterator[Hostile]:
    stores: dict[str, Any] = dict(gateway_stores)
    h = build_hostile(tmp_path, **stores)
    yield h
    h.close()


def _check(h: Hostile, subject: str, district: str) -> Any:
    body = {"subject": {"id_number": subject}, "claim": CLAIM, "purpose": "school_enrollment",
            "params": {"district": district}}  # fmt: skip
    return h.client.post("/v1/checks", json=body, headers=h.auth("edu-bureau"))


def test_walking_the_districts_is_refused_at_the_second(gw: Hostile) -> None:
    first = _check(gw, ADULT, DISTRICTS[0])
    assert first.status_code == 200, first.get_json()
    before = gw.audit_size()
    for district in DISTRICTS[1:]:
        resp = _check(gw, ADULT, district)
        body = resp.get_json()
        assert resp.status_code == 403, body
        assert resp.mimetype == "application/problem+json"
        assert body["type"] == PROBLEM_BASE + "parameter-enumeration"
        assert body["parameter"] == "district" and body["distinct_values"] == 1
        assert body["window_seconds"] == 30 * 86400
        text = resp.get_data(as_text=True)
        # Neither the subject, nor the value asked, nor the one asked before.
        assert ADULT not in text and district not in text and DISTRICTS[0] not in text
        assert "answer" not in body and "result" not in body
        assert isinstance(body["audit_index"], int)
    # Each refusal is audited, as a denial, and no department was asked.
    assert gw.gateway.audit is not None
    rows, _ = gw.gateway.audit.entries({}, cursor=before - 1, limit=50, newest_first=False)
    refusals = [r.entry for r in rows]
    assert len(refusals) == len(DISTRICTS) - 1
    assert {e["result"] for e in refusals} == {"denied"}
    assert {e["error"] for e in refusals} == {"parameter-enumeration"}
    assert not [e for e in refusals if "departments" in e]


def test_the_same_value_again_and_other_subjects_are_answered(gw: Hostile) -> None:
    assert _check(gw, ADULT, DISTRICTS[2]).status_code == 200
    assert _check(gw, ADULT, DISTRICTS[2]).status_code == 200  # a re-check
    assert _check(gw, OTHER_ADULT, DISTRICTS[5]).status_code == 200
    assert _check(gw, ADULT, DISTRICTS[5]).status_code == 403


def test_a_batch_refuses_the_subjects_already_asked_another_value(gw: Hostile) -> None:
    assert _check(gw, ADULT, DISTRICTS[0]).status_code == 200
    body = {"claim": CLAIM, "purpose": "school_enrollment", "params": {"district": DISTRICTS[1]},
            "subjects": [{"id_number": ADULT}, {"id_number": OTHER_ADULT}]}  # fmt: skip
    resp = gw.client.post("/v1/checks/batch", json=body, headers=gw.auth("edu-bureau"))
    assert resp.status_code == 200, resp.get_json()
    results = resp.get_json()["results"]
    assert results[0]["result"] == "denied" and results[0]["reason"] == "parameter-enumeration"
    assert results[1]["result"] == "undetermined"
    # The batch recorded OTHER_ADULT's district: a third district is refused for both.
    again = {**body, "params": {"district": DISTRICTS[2]}}
    resp = gw.client.post("/v1/checks/batch", json=again, headers=gw.auth("edu-bureau"))
    assert {r["reason"] for r in resp.get_json()["results"]} == {"parameter-enumeration"}


def test_the_record_holds_no_subject_no_pseudonym_and_no_value(gw: Hostile) -> None:
    for subject in (ADULT, OTHER_ADULT):
        assert _check(gw, subject, DISTRICTS[3]).status_code == 200
    checker = gw.gateway.checker
    assert checker is not None and checker.enumeration is not None
    guard = checker.enumeration
    with guard.engine.connect() as conn:
        rows = [tuple(map(str, r)) for r in conn.execute(select(param_asks))]
    assert len(rows) == 2
    assert gw.gateway.audit is not None
    pseudonyms = {gw.gateway.audit.pseudonyms.pseudonym(s) for s in (ADULT, OTHER_ADULT)}
    dumped = json.dumps(rows)
    for secret in (ADULT, OTHER_ADULT, DISTRICTS[3], "edu-bureau", CLAIM, *pseudonyms):
        assert secret not in dumped


def test_claims_list_shows_the_limit(gw: Hostile) -> None:
    body = gw.client.get("/v1/claims", headers=gw.auth("edu-bureau")).get_json()
    (claim,) = [c for c in body["claims"] if c["name"] == CLAIM]
    assert claim["param_limits"] == {
        "district": {"distinct_values": 1, "window_seconds": 30 * 86400.0}
    }


# --- the guard itself: windows, limits and workers racing ----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _url(tmp_path: Path, gateway_stores: dict[str, str]) -> str:
    return gateway_stores.get("gateway_db_url", f"sqlite:///{tmp_path / 'gateway.db'}")


def test_another_value_is_allowed_after_the_window(
    tmp_path: Path, gateway_stores: dict[str, str]
) -> None:
    clock = Clock()
    guard = EnumerationGuard(_url(tmp_path, gateway_stores), pseudonym=str.upper, clock=clock)
    guard.create_schema()
    limits = {"district": ParamLimit(2, 100.0)}
    try:

        def ask(district: str) -> set[int]:
            return guard.admit("r", CLAIM, {"district": district}, limits, ["s"])

        assert ask("a") == set() and ask("b") == set()  # two values allowed
        assert ask("c") == {0}
        assert ask("a") == set()  # one of the two, again
        clock.now += 100.0
        assert ask("c") == set()  # the window of a and b is over
        assert ask("d") == set() and ask("e") == {0}
        # Another requester, another claim: their own records.
        assert guard.admit("other", CLAIM, {"district": "z"}, limits, ["s"]) == set()
    finally:
        guard.engine.dispose()


def test_two_workers_racing_admit_one_value(tmp_path: Path, gateway_stores: dict[str, str]) -> None:
    url = _url(tmp_path, gateway_stores)
    guards = [EnumerationGuard(url, pseudonym=str.upper) for _ in range(2)]
    guards[0].create_schema()
    limits = {"district": DEFAULT_LIMIT}
    admitted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(DISTRICTS))

    def ask(i: int, district: str) -> None:
        start.wait()
        refused = guards[i % 2].admit("r", CLAIM, {"district": district}, limits, ["subject"])
        if not refused:
            with lock:
                admitted.append(district)

    threads = [threading.Thread(target=ask, args=(i, d)) for i, d in enumerate(DISTRICTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(admitted) == 1, admitted
    finally:
        for g in guards:
            g.engine.dispose()


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        ({"region": {"distinct_values": 1, "window_seconds": 10}}, "not parameters"),
        ({"district": {"distinct_values": 0, "window_seconds": 10}}, "distinct_values"),
        ({"district": {"distinct_values": 1, "window_seconds": -1}}, "window_seconds"),
        ({"district": {"distinct_values": 1}}, "expected"),
        ({"district": {"distinct_values": True, "window_seconds": 1}}, "distinct_values"),
    ],
)
def test_the_catalog_refuses_a_bad_limit(limits: dict[str, Any], error: str) -> None:
    doc = _shipped()
    doc["claims"][CLAIM]["param_limits"] = limits
    with pytest.raises(ValueError, match=error):
        Catalog.from_json(doc, DEPARTMENTS)


def test_an_undeclared_limit_is_the_default() -> None:
    doc = _shipped()
    del doc["claims"][CLAIM]["param_limits"]
    claim = Catalog.from_json(doc, DEPARTMENTS).claims[CLAIM]
    assert claim.param_limits == {"district": DEFAULT_LIMIT}


def _shipped() -> dict[str, Any]:
    from importlib import resources

    doc: dict[str, Any] = json.loads(
        resources.files("tongban.gateway").joinpath("claims.json").read_text("utf-8")
    )
    return doc
