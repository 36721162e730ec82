"""The officer and citizen pages through Flask's test client: login, masking, filters,
CSV export, the audited lookup, proofs and the consent forms."""

from __future__ import annotations

import base64
import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tongban.audit.merkle import leaf_hash, verify_inclusion
from tongban.audit.note import SignedNote
from tongban.primitives.idnumber import mask

from .conftest import Generated
from .gateway_harness import PUBLIC_URL, Harness, build_harness


@pytest.fixture(scope="module")
def harness(
    small_population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    h = build_harness(tmp_path_factory.mktemp("pages"), small_population.urls, party_keys)
    yield h
    h.close()


@pytest.fixture(scope="module")
def people(small_population: Generated) -> list[dict[str, Any]]:
    return small_population.subjects()[:40]


def csrf(client: FlaskClient, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def officer(harness: Harness, client_id: str = "privacy-officer") -> FlaskClient:
    client = harness.app.test_client()
    token = csrf(client, "/officer/login")
    resp = client.post(
        "/officer/login",
        data={"csrf": token, "client_id": client_id, "secret": harness.secrets[client_id]},
    )
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def citizen(harness: Harness, id_number: str) -> FlaskClient:
    client = harness.app.test_client()
    # The demo's login page says it is the demo's (a production one does not: see
    # tests/test_citizen_idp.py).
    assert "DEMO ONLY" in client.get("/me/login").get_data(as_text=True)
    bearer = harness.citizen(id_number)["Authorization"].removeprefix("Bearer ")
    resp = client.post("/me/login", data={"csrf": csrf(client, "/me/login"), "token": bearer})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def table_requesters(html: str) -> list[str]:
    return re.findall(r'<tr data-index="\d+" data-requester="([^"]*)"', html)


def page_csrf(client: FlaskClient, path: str) -> str:
    return csrf(client, path)


def test_pages_require_login(harness):
    anon = harness.app.test_client()
    for path in ("/officer/", "/officer/export.csv", "/me/"):
        resp = anon.get(path)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], path
    assert anon.get("/officer/api/proof/0").status_code == 401


def test_officer_login_refuses_bad_secret_missing_csrf_and_wrong_scope(harness):
    client = harness.app.test_client()
    token = csrf(client, "/officer/login")
    bad = {"csrf": token, "client_id": "privacy-officer", "secret": "wrong"}
    assert client.post("/officer/login", data=bad).status_code == 401
    no_csrf = {"client_id": "privacy-officer", "secret": harness.secrets["privacy-officer"]}
    assert client.post("/officer/login", data=no_csrf).status_code == 403
    # A requester system without audit:read cannot use the officer page.
    edu = {"csrf": token, "client_id": "edu-bureau", "secret": harness.secrets["edu-bureau"]}
    assert client.post("/officer/login", data=edu).status_code == 401
    assert client.get("/officer/").status_code == 302


def test_session_cookie_is_httponly_and_samesite_strict(harness):
    client = harness.app.test_client()
    token = csrf(client, "/officer/login")
    resp = client.post(
        "/officer/login",
        data={"csrf": token, "client_id": "privacy-officer",
              "secret": harness.secrets["privacy-officer"]},
    )  # fmt: skip
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("tongban_pages="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would not return
    assert resp.headers["Cache-Control"] == "no-store"


def test_session_cookie_is_secure_over_tls(harness):
    """Served over TLS (``wsgi.url_scheme`` https), the cookie carries ``Secure``."""
    client = harness.app.test_client()
    page = client.get("/officer/login", base_url="https://localhost")
    token = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert token is not None
    resp = client.post(
        "/officer/login",
        base_url="https://localhost",
        data={"csrf": token.group(1), "client_id": "privacy-officer",
              "secret": harness.secrets["privacy-officer"]},
    )  # fmt: skip
    assert resp.status_code == 302, resp.get_data(as_text=True)
    cookies = [h for h in resp.headers.getlist("Set-Cookie") if h.startswith("tongban_pages=")]
    assert cookies and all("; Secure" in c for c in cookies)
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_officer_finds_denied_insurer_request_with_subjects_masked(harness, people):
    for row in people[:10]:
        body = {"subject": {"id_number": row["id_number"]}, "claim": "birth_registered",
                "purpose": "school_enrollment", "params": {}}  # fmt: skip
        assert harness.check("edu-bureau", body).status_code == 200
    victim = people[10]["id_number"]
    denied = harness.check(
        "insurer-a",
        {"subject": {"id_number": victim}, "claim": "birth_registered", "purpose": "underwriting",
         "params": {}},
    )  # fmt: skip
    assert denied.status_code == 403
    client = officer(harness)

    html = client.get("/officer/?requester=insurer-a&result=denied").get_data(as_text=True)

    assert set(table_requesters(html)) == {"insurer-a"}
    assert 'data-claim="birth_registered" data-purpose="underwriting"' in html and "deny" in html
    assert mask(victim) in html
    full = client.get("/officer/?kind=all").get_data(as_text=True)
    assert "<svg" in full
    for row in people:
        assert row["id_number"] not in html and row["id_number"] not in full


def test_csv_export_holds_the_filtered_view_masked(harness, people):
    victim = people[11]["id_number"]
    harness.check(
        "insurer-a",
        {"subject": {"id_number": victim}, "claim": "birth_registered", "purpose": "underwriting",
         "params": {}},
    )  # fmt: skip
    client = officer(harness)

    resp = client.get("/officer/export.csv?requester=insurer-a&result=denied")

    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    text = resp.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {r["requester"] for r in rows} == {"insurer-a"}
    assert {r["result"] for r in rows} == {"denied"} and {r["decision"] for r in rows} == {"deny"}
    assert mask(victim) in {r["subject"] for r in rows}
    for row in people:
        assert row["id_number"] not in text


def test_lookup_by_id_number_is_audited_and_never_echoed(harness, people):
    target = people[12]["id_number"]
    harness.check(
        "edu-bureau",
        {"subject": {"id_number": target}, "claim": "birth_registered",
         "purpose": "school_enrollment", "params": {}},
    )  # fmt: skip
    client = officer(harness)
    before = harness.gateway.audit.size if harness.gateway.audit else 0

    resp = client.post(
        "/officer/lookup", data={"csrf": page_csrf(client, "/officer/"), "id_number": target}
    )

    assert resp.status_code == 302
    log = harness.gateway.audit
    assert log is not None
    lookups, _ = log.entries({"kind": "officer_lookup", "requester": "privacy-officer"})
    assert lookups and lookups[0].index >= before
    assert lookups[0].entry["subject"] == log.pseudonyms.pseudonym(target)
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert target not in html and mask(target) in html and "officer_lookup" in html
    bad = client.post(
        "/officer/lookup", data={"csrf": page_csrf(client, "/officer/"), "id_number": "123"}
    )
    assert "lookup_error=1" in bad.headers["Location"] and "123" not in bad.headers["Location"]


def test_lookup_needs_csrf(harness, people):
    client = officer(harness)
    resp = client.post("/officer/lookup", data={"id_number": people[0]["id_number"]})
    assert resp.status_code == 403


def test_checkpoint_signatures_and_proof_material(harness, people):
    harness.check(
        "edu-bureau",
        {"subject": {"id_number": people[13]["id_number"]}, "claim": "birth_registered",
         "purpose": "school_enrollment", "params": {}},
    )  # fmt: skip
    assert harness.gateway.checkpointer is not None
    harness.gateway.checkpointer.checkpoint()
    client = officer(harness)

    html = client.get("/officer/").get_data(as_text=True)
    assert "signature verified" in html and "FAILED" not in html
    assert html.count('class="signer ok"') == 1 + len(harness.gateway.witness_keys)

    proof = client.get("/officer/api/proof/1").get_json()
    assert proof["status"] == "ready"
    entry = base64.b64decode(proof["entry_b64"])
    assert leaf_hash(entry).hex() == proof["leaf_hash"]
    root = SignedNote.parse(proof["checkpoint"]).checkpoint.root
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    assert verify_inclusion(1, proof["tree_size"], leaf_hash(entry), path, root)


def test_anomaly_flag_links_to_the_burst(harness, people):
    for row in people[20:32]:
        body = {"subject": {"id_number": row["id_number"]}, "claim": "birth_registered",
                "purpose": "school_enrollment", "params": {}}  # fmt: skip
        harness.check("edu-bureau", body)
    client = officer(harness)

    html = client.get("/officer/?burst_subjects=10&burst_minutes=10").get_data(as_text=True)

    assert 'data-kind="burst" data-requester="edu-bureau"' in html
    href = re.search(r'<li class="flag flag-burst".*?href="([^"]+)"', html, re.S)
    assert href
    linked = client.get(href.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert len(table_requesters(linked)) >= 10
    assert set(table_requesters(linked)) == {"edu-bureau"}


def test_bad_thresholds_fall_back_to_defaults_with_a_message(harness):
    html = officer(harness).get("/officer/?burst_subjects=0").get_data(as_text=True)
    assert "burst_subjects: expected at least 1" in html


def test_citizen_grants_then_revokes_and_checks_follow(harness, people):
    me = people[30]["id_number"]
    client = citizen(harness, me)
    token = page_csrf(client, "/me/")
    grant = {
        "csrf": token,
        "requester": "insurer-a",
        "purposes": "insurance_claim",
        "claims": "maternity_insurance_active",
        "valid_days": "30",
        "max_uses": "3",
    }

    resp = client.post("/me/consents", data=grant)
    assert resp.status_code == 302 and "granted" in resp.headers["Location"]
    html = client.get("/me/").get_data(as_text=True)
    consent_id = re.search(r'data-consent="([^"]+)" data-status="active"', html)
    assert consent_id
    body = {
        "subject": {"id_number": me},
        "claim": "maternity_insurance_active",
        "purpose": "insurance_claim",
        "params": {},
        "consent_id": consent_id.group(1),
    }
    assert harness.check("insurer-a", body).status_code == 200

    html = client.get("/me/").get_data(as_text=True)
    assert 'data-requester="insurer-a"' in html and "insurance_claim" in html
    assert me not in html and mask(me) in html

    revoke = client.post(f"/me/consents/{consent_id.group(1)}/revoke", data={"csrf": token})
    assert revoke.status_code == 302 and "revoked" in revoke.headers["Location"]
    refused = harness.check("insurer-a", body)
    assert refused.status_code == 403
    assert refused.get_json()["type"].endswith("consent-revoked")
    html = client.get("/me/").get_data(as_text=True)
    assert 'data-status="revoked"' in html and 'data-result="denied"' in html


def test_citizen_forms_need_csrf_and_a_valid_token(harness, people):
    client = citizen(harness, people[31]["id_number"])
    assert client.post("/me/consents", data={"requester": "insurer-a"}).status_code == 403
    anon = harness.app.test_client()
    resp = anon.post("/me/login", data={"csrf": csrf(anon, "/me/login"), "token": "not.a.token"})
    assert resp.status_code == 401
    assert PUBLIC_URL not in resp.get_data(as_text=True)


def test_citizen_grant_errors_are_shown(harness, people):
    client = citizen(harness, people[32]["id_number"])
    bad = {"csrf": page_csrf(client, "/me/"), "requester": "insurer-a",
           "purposes": "insurance_claim", "claims": "maternity_insurance_active",
           "valid_days": "0", "max_uses": "1"}  # fmt: skip
    resp = client.post("/me/consents", data=bad)
    assert resp.status_code == 302 and "error=" in resp.headers["Location"]


def test_the_citizen_page_shows_only_its_own_messages(harness, people):
    """``/me/?error=<text>`` once showed the text verbatim (a phishing line on a government
    page); now a key picks a fixed message, and anything else is a generic one."""
    client = citizen(harness, people[33]["id_number"])
    lure = "Your account is locked. Call 110-555-0199"
    page = client.get("/me/", query_string={"error": lure, "message": lure}).get_data(as_text=True)
    assert "Call 110" not in page and "locked" not in page
    assert "That did not work; nothing was changed" in page  # the generic error
    known = client.get("/me/", query_string={"error": "consent-not-active"})
    assert "That consent is no longer active" in known.get_data(as_text=True)
    granted = client.get("/me/", query_string={"message": "granted", "id": "<b>x</b>"})
    text = granted.get_data(as_text=True)
    assert "Consent granted" in text and "<b>x</b>" not in text and "&lt;b&gt;" not in text


def test_a_checkpoint_below_quorum_is_flagged_on_the_officer_page(harness, people):
    """Finding 3: a checkpoint with fewer cosignatures than the quorum (here: every witness
    but one down) is flagged, and the flag goes once a witnessed checkpoint follows."""
    from tongban.adapters.client import InProcessTransport

    cp = harness.gateway.checkpointer
    assert cp is not None and isinstance(cp.transport, InProcessTransport)
    client = officer(harness)
    full = cp.transport
    one = next(iter(full.witnesses))
    cp.transport = InProcessTransport({}, {one: full.witnesses[one]})
    try:
        harness.check("edu-bureau", {"subject": {"id_number": people[0]["id_number"]},
                                     "claim": "birth_registered", "purpose": "school_enrollment",
                                     "params": {}})  # fmt: skip
        cp.checkpoint(force=True)
        html = client.get("/officer/").get_data(as_text=True)
        assert 'id="cp-quorum"' in html
        assert f"1 of\n    the {cp.quorum} witnesses" in html
        assert html.count('class="signer missing"') == len(harness.gateway.witness_keys) - 1
    finally:
        cp.transport = full
    cp.checkpoint(force=True)
    html = client.get("/officer/").get_data(as_text=True)
    assert 'id="cp-quorum"' not in html and 'id="cp-diverged"' not in html
