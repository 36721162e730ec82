"""The check pipeline end to end: OAuth → policy → consent → adapters → audit → signed answer,
against the generator's truth oracle, on SQLite and PostgreSQL department stores."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tongban.adapters.client import InProcessTransport, WireRequest, WireResponse
from tongban.audit.merkle import verify_inclusion
from tongban.audit.note import SignedNote
from tongban.primitives.errors import DepartmentUnavailable
from tongban.primitives.gm import SM2PublicKey, get_backend
from tongban.primitives.jws import key_from_jwk, verify_compact

from .conftest import Generated
from .gateway_harness import Harness, build_harness, jws_parts

WORD = {True: "yes", False: "no", None: "undetermined"}
# Who asks each claim, for which statutory purpose, in the demo policy.
ASKERS = {
    "birth_registered": ("edu-bureau", "school_enrollment"),
    "household_in_district": ("edu-bureau", "school_enrollment"),
    "married": ("allowance-office", "maternity_allowance"),
    "maternity_insurance_active": ("allowance-office", "maternity_allowance"),
    "third_child_subsidy_eligible": ("subsidy-office", "childcare_subsidy"),
    "low_income_household": ("edu-bureau", "school_fee_waiver"),
}


@pytest.fixture(scope="module")
def harness(
    population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    h = build_harness(tmp_path_factory.mktemp("gateway"), population.urls, party_keys)
    yield h
    h.close()


@pytest.fixture(scope="module")
def truth(population: Generated) -> list[dict[str, Any]]:
    return population.subjects()


def _sample(truth: list[dict[str, Any]], claim: str, n: int) -> list[dict[str, Any]]:
    """Up to n subjects with every answer the claim has, so rare ones are covered."""
    rng = random.Random(claim)
    by_value: dict[Any, list[dict[str, Any]]] = {}
    for row in truth:
        by_value.setdefault(row["claims"][claim], []).append(row)
    picked: list[dict[str, Any]] = []
    for rows in by_value.values():
        picked += rng.sample(rows, min(len(rows), n // len(by_value)))
    return picked


def _body(claim: str, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    purpose = ASKERS[claim][1]
    params = {"district": row["district"]} if claim == "household_in_district" else {}
    return {"subject": {"id_number": row["id_number"]}, "claim": claim, "purpose": purpose,
            "params": params, **extra}  # fmt: skip


def _in_days(days: int) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _jwks(h: Harness) -> dict[str, Any]:
    return {k["kid"]: k for k in h.client.get("/.well-known/jwks.json").get_json()["keys"]}


@pytest.mark.slow
@pytest.mark.parametrize("claim", list(ASKERS))
def test_answers_match_the_truth_oracle(harness, truth, claim):
    requester = ASKERS[claim][0]
    rows = _sample(truth, claim, 150)
    seen: Counter[str] = Counter()

    for row in rows:
        resp = harness.check(requester, _body(claim, row))
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["result"] == WORD[row["claims"][claim]], (claim, row["claims"][claim])
        assert set(body) == {"result", "answer", "audit_index"}
        seen[body["result"]] += 1

    assert len(seen) >= 2  # the sample exercises more than one answer


def test_answer_is_a_verifiable_minimal_jws(harness, truth):
    row = next(r for r in truth if r["claims"]["birth_registered"] is True)
    body = harness.check("edu-bureau", _body("birth_registered", row)).get_json()
    header, payload, sig = jws_parts(body["answer"])

    assert header["typ"] == "tongban-answer+jwt" and header["alg"] == "SM2"
    jwk = _jwks(harness)[header["kid"]]
    assert {"kty", "crv", "x", "y", "kid"} <= set(jwk) and jwk["crv"] == "SM2"
    assert len(sig) == 64  # r || s, as JOSE encodes ES256
    # Verified by an SM2 implementation other than the one that signed (gmssl, pure Python).
    key = SM2PublicKey.from_jwk(jwk)
    signing_input = body["answer"].rsplit(".", 1)[0].encode()
    assert get_backend("gmssl").verify(key.x, key.y, signing_input, sig)
    assert {"iss", "aud", "sub", "claim", "purpose", "params", "result", "iat", "exp", "jti",
            "policy_version", "audit_index"} <= set(payload)  # fmt: skip
    assert payload["aud"] == "edu-bureau" and payload["result"] == "yes"
    assert "legal_basis" in payload
    assert row["id_number"] not in json.dumps(payload)  # sub is a pairwise pseudonym


def test_es256_answers_are_selectable(harness, truth):
    row = truth[0]
    body = harness.check("edu-bureau", _body("birth_registered", row, answer_alg="ES256"))
    token = body.get_json()["answer"]

    header, _, _ = jws_parts(token)
    assert header["alg"] == "ES256"
    keys = {kid: key_from_jwk(jwk) for kid, jwk in _jwks(harness).items()}
    verify_compact(token, keys.get, typ="tongban-answer+jwt", algorithms=["ES256"])


def test_pairwise_subjects_differ_between_requesters(harness, truth):
    row = next(r for r in truth if r["claims"]["birth_registered"] is not None)
    a = harness.check("edu-bureau", _body("birth_registered", row)).get_json()
    other = {**_body("birth_registered", row), "purpose": "maternity_allowance"}
    b = harness.check("allowance-office", other).get_json()

    assert jws_parts(a["answer"])[1]["sub"] != jws_parts(b["answer"])[1]["sub"]


def test_every_check_is_in_the_log_with_an_inclusion_proof(harness, truth):
    body = harness.check("edu-bureau", _body("birth_registered", truth[1])).get_json()
    index = body["audit_index"]
    note = SignedNote.parse(harness.gateway.checkpointer.checkpoint().text())
    size = note.checkpoint.size

    resp = harness.client.get(
        f"/v1/audit/proofs/inclusion?index={index}&size={size}", headers=harness.auth("edu-bureau")
    )
    proof = resp.get_json()
    assert resp.status_code == 200
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    leaf = bytes.fromhex(proof["leaf_hash"])
    assert verify_inclusion(index, size, leaf, path, note.checkpoint.root)
    entry = harness.gateway.audit.get(index).entry
    assert entry["kind"] == "check" and entry["requester"] == "edu-bureau"
    assert truth[1]["id_number"] not in json.dumps(entry)


def test_insurer_may_not_ask_fertility_claims_for_underwriting(harness, truth):
    body = {**_body("birth_registered", truth[0]), "purpose": "underwriting"}
    resp = harness.check("insurer-a", body)

    problem = resp.get_json()
    assert resp.status_code == 403
    assert problem["type"].endswith("/policy-denied")
    entry = harness.gateway.audit.get(problem["audit_index"]).entry
    assert entry["result"] == "denied" and entry["decision"]["allowed"] is False
    assert entry["decision"]["rule"][-1] == "deny"  # the negative list's rule decided it
    assert truth[0]["id_number"] not in resp.get_data(as_text=True)


def test_consent_grant_then_revoke_takes_effect_on_the_next_check(harness, truth):
    row = next(r for r in truth if r["claims"]["maternity_insurance_active"] is True)
    ask = {"subject": {"id_number": row["id_number"]}, "claim": "maternity_insurance_active",
           "purpose": "insurance_claim"}  # fmt: skip

    refused = harness.check("insurer-a", ask)
    assert refused.status_code == 403
    assert refused.get_json()["type"].endswith("/consent-required")

    grant = harness.client.post(
        "/v1/consents",
        json={"requester": "insurer-a", "purposes": ["insurance_claim"],
              "claims": ["maternity_insurance_active"], "expires_at": _in_days(30),
              "max_uses": 5},
        headers=harness.citizen(row["id_number"]),
    )  # fmt: skip
    assert grant.status_code == 201, grant.get_json()
    consent_id = grant.get_json()["id"]

    allowed = harness.check("insurer-a", {**ask, "consent_id": consent_id})
    assert allowed.status_code == 200 and allowed.get_json()["result"] == "yes"
    assert jws_parts(allowed.get_json()["answer"])[1]["consent_id"] == consent_id

    revoked = harness.client.delete(
        f"/v1/consents/{consent_id}", headers=harness.citizen(row["id_number"])
    )
    assert revoked.status_code == 200

    after = harness.check("insurer-a", {**ask, "consent_id": consent_id})
    assert after.status_code == 403
    assert after.get_json()["type"].endswith("/consent-revoked")


def test_citizen_sees_who_checked_them(harness, truth):
    row = truth[5]
    harness.check("edu-bureau", _body("birth_registered", row))

    resp = harness.client.get("/v1/me/access-log", headers=harness.citizen(row["id_number"]))
    body = resp.get_json()
    assert resp.status_code == 200
    entries = body.get("entries", body.get("items", []))
    assert any(e["requester"] == "edu-bureau" and e["claim"] == "birth_registered"
               for e in entries)  # fmt: skip


def test_two_person_rule_over_http(harness):
    change = {"rules": [{"op": "add", "rule": ["p", "insurer", "civil", "married",
                                               "insurance_claim", "allow"]}]}  # fmt: skip
    before = harness.client.get("/v1/admin/policy", headers=harness.auth("admin-1")).get_json()
    proposed = harness.client.post("/v1/admin/policy/changes", json=change,
                                   headers=harness.auth("admin-1"))  # fmt: skip
    assert proposed.status_code == 201
    change_id = proposed.get_json()["id"]

    same = harness.client.post(f"/v1/admin/policy/changes/{change_id}/approve",
                               headers=harness.auth("admin-1"))  # fmt: skip
    assert same.status_code == 403
    assert same.get_json()["type"].endswith("/two-person-rule")
    pending = harness.client.get("/v1/admin/policy", headers=harness.auth("admin-1")).get_json()
    assert pending["version"] == before["version"]  # not yet in effect

    other = harness.client.post(f"/v1/admin/policy/changes/{change_id}/approve",
                                headers=harness.auth("admin-2"))  # fmt: skip
    assert other.status_code == 200
    assert other.get_json()["policy_version"] != before["version"]
    kinds = [e.entry.get("kind") for e in harness.gateway.audit.entries({}, limit=20)[0]]
    assert any(k and "policy" in k for k in kinds)


class _PoliceDown:
    def __init__(self, inner: InProcessTransport) -> None:
        self.inner = inner

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        if department == "police":
            raise DepartmentUnavailable("police is down")
        return self.inner.handle_request(department, request, timeout)


def test_a_department_that_is_down_makes_the_answer_undetermined_never_no(harness, truth):
    certified = next(r for r in truth if r["claims"]["birth_registered"] is True)
    client = harness.gateway.departments
    original = client.transport
    client.transport = _PoliceDown(original)
    try:
        resp = harness.check("edu-bureau", _body("birth_registered", certified))
    finally:
        client.transport = original
    assert resp.status_code == 200
    assert resp.get_json()["result"] == "undetermined"


@pytest.mark.parametrize(
    ("mutate", "status", "slug"),
    [
        (lambda b: {**b, "claim": "credit_score"}, 400, "unknown-claim"),
        (lambda b: {**b, "purpose": "marketing"}, 400, "unknown-purpose"),
        (lambda b: {**b, "claim": "household_in_district", "params": {"district": "999999"}},
         400, "unknown-parameter"),
        (lambda b: {**b, "params": {"threshold": "3"}}, 400, "unknown-parameter"),
        (lambda b: {**b, "subject": {"id_number": "11010519491231002Y"}}, 422, "invalid-id-number"),
        (lambda b: {**b, "extra": 1}, 400, "bad-request"),
    ],
)  # fmt: skip
def test_bad_requests_get_problem_json(harness, truth, mutate, status, slug):
    body = mutate(_body("birth_registered", truth[0]))
    resp = harness.check("edu-bureau", body)

    assert resp.status_code == status
    assert resp.mimetype == "application/problem+json"
    assert resp.get_json()["type"].endswith("/" + slug)
    assert truth[0]["id_number"] not in resp.get_data(as_text=True)


def test_malformed_json_oversized_and_missing_token(harness):
    malformed = harness.client.post("/v1/checks", data="{nope", headers={
        **harness.auth("edu-bureau"), "Content-Type": "application/json"})  # fmt: skip
    assert malformed.status_code == 400
    huge = harness.client.post("/v1/checks", data="x" * 100_000, headers={
        **harness.auth("edu-bureau"), "Content-Type": "application/json"})  # fmt: skip
    assert huge.status_code == 413
    assert huge.get_json()["type"].endswith("/payload-too-large")
    anonymous = harness.client.post("/v1/checks", json={})
    assert anonymous.status_code == 401
    assert anonymous.get_json()["type"].endswith("/token-missing")
    wrong_scope = harness.client.post(
        "/v1/checks", json={}, headers=harness.auth("privacy-officer")
    )
    assert wrong_scope.status_code == 403


def test_batch_matches_truth_with_one_signed_answer(harness, truth):
    rows = _sample(truth, "birth_registered", 300)
    subjects = [{"id_number": r["id_number"]} for r in rows] + [{"id_number": "123"}]
    resp = harness.client.post(
        "/v1/checks/batch",
        json={"claim": "birth_registered", "purpose": "school_enrollment", "subjects": subjects},
        headers=harness.auth("edu-bureau"),
    )
    body = resp.get_json()
    assert resp.status_code == 200, body
    results = body["results"]
    assert [r["result"] for r in results[:-1]] == [WORD[r["claims"]["birth_registered"]]
                                                   for r in rows]  # fmt: skip
    assert results[-1]["result"] == "invalid"
    _, payload, _ = jws_parts(body["answer"])
    assert [r["result"] for r in payload["results"]] == [r["result"] for r in results]
    assert len({r["audit_index"] for r in results}) == len(results)


def test_claims_lists_only_what_the_caller_may_ask(harness):
    edu = harness.client.get("/v1/claims", headers=harness.auth("edu-bureau")).get_json()
    insurer = harness.client.get("/v1/claims", headers=harness.auth("insurer-a")).get_json()

    assert {c["name"] for c in edu["claims"]} == {
        "birth_registered", "household_in_district", "low_income_household"}  # fmt: skip
    insurer_claims = {c["name"]: c for c in insurer["claims"]}
    assert "birth_registered" not in insurer_claims
    purposes = insurer_claims["maternity_insurance_active"]["purposes"]
    assert purposes == [{"name": "insurance_claim", "consent_required": True, "legal_basis": None}]


def test_a_large_batch_keeps_a_window_of_chunks_in_flight_per_department(
    harness, truth, monkeypatch
):
    """A 4,000-subject batch is 8+ chunks per department; never more than
    CHUNKS_IN_FLIGHT are at a department at once (a slow live database would time the
    queued ones out), and every answer is still the truth."""
    import threading
    import time

    from tongban.gateway.checks import CHUNKS_IN_FLIGHT

    client = harness.gateway.departments
    original = client.evaluate_batch
    lock = threading.Lock()
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    calls: Counter[str] = Counter()

    def slow(department, predicate, params, subjects):
        with lock:
            in_flight[department] += 1
            calls[department] += 1
            peak[department] = max(peak[department], in_flight[department])
        try:
            time.sleep(0.02)
            return original(department, predicate, params, subjects)
        finally:
            with lock:
                in_flight[department] -= 1

    monkeypatch.setattr(client, "evaluate_batch", slow)
    rows = [r for r in truth if r["claims"].get("birth_registered") is not None]
    rows = (rows * (4000 // len(rows) + 1))[:4000] if len(rows) < 4000 else rows[:4000]
    subjects = [{"id_number": r["id_number"]} for r in rows]
    resp = harness.client.post(
        "/v1/checks/batch",
        json={"claim": "birth_registered", "purpose": "school_enrollment", "subjects": subjects},
        headers=harness.auth("edu-bureau"),
    )
    assert resp.status_code == 200, resp.get_json()
    results = resp.get_json()["results"]
    assert [r["result"] for r in results] == [WORD[r["claims"]["birth_registered"]] for r in rows]
    unique = len({r["id_number"] for r in rows})
    for department, n in calls.items():
        assert n == -(-unique // 500), (department, n)
        assert 1 < peak[department] <= CHUNKS_IN_FLIGHT, (department, peak[department])
