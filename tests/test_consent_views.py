"""Citizen HTTP endpoints: consents and the access log, behind IdP citizen tokens."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import ConsentEnv, make_consent_env
from tongban.adapters.client import DepartmentClient, InProcessTransport
from tongban.adapters.protocol import RequestSigner
from tongban.audit.log import AuditLog
from tongban.gateway.catalog import Catalog
from tongban.gateway.oauth import CitizenTokenVerifier, TokenIssuer, mint_citizen_token
from tongban.gateway.oauth.flask import init_oauth
from tongban.gateway.services import AuditEvents, Gateway
from tongban.gateway.views_citizen import citizen_blueprint
from tongban.http_shell import install_problem_handlers
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id, mask

IDP = "https://idp.test"
GATEWAY = "https://gateway.test"
IDP_KEY = SM2PrivateKey.generate()
ME = make_id("150622", dt.date(1985, 3, 9), 42)
NEIGHBOUR = make_id("110105", dt.date(1990, 7, 1), 17)
CHILD = make_id("150403", dt.date(2016, 5, 20), 31)
MAX_BODY = 64 * 1024
GRANT = {
    "requester": "insurer-a",
    "purposes": ["insurance_claim"],
    "claims": ["maternity_insurance_active"],
    "expires_at": "2026-09-01T00:00:00Z",
    "max_uses": 3,
}


@dataclass
class CitizenApp:
    http: FlaskClient
    env: ConsentEnv
    log: AuditLog

    def call(self, method: str, path: str, who: str | None = ME, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            token = mint_citizen_token(IDP_KEY, who, issuer=IDP, audience=GATEWAY)
            headers["Authorization"] = f"Bearer {token}"
        resp = self.http.open(path, method=method, headers=headers, **kwargs)
        body = resp.get_data(as_text=True)
        assert ME not in body and NEIGHBOUR not in body and CHILD not in body
        return resp


@pytest.fixture
def app(tmp_path, claim_catalog: Catalog, party_keys) -> Iterator[CitizenApp]:
    key = party_keys["gateway"]
    env = make_consent_env(f"sqlite:///{tmp_path / 'gateway.db'}", claim_catalog, key)
    log = AuditLog(
        f"sqlite:///{tmp_path / 'audit.db'}",
        env.store.pseudonyms,
        origin="gateway.test/audit",
        create=True,
    ).open()
    env.store.audit = AuditEvents(log)
    gateway = Gateway(
        catalog=claim_catalog,
        departments=DepartmentClient(RequestSigner(key), InProcessTransport({}), {}),
        audit=log,
        signing_key=key,
    )
    flask_app = Flask("citizen-views-test")
    flask_app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    install_problem_handlers(flask_app, MAX_BODY, logging.getLogger("citizen-views-test"))
    init_oauth(
        flask_app,
        env.store.registry,
        TokenIssuer(key, issuer=GATEWAY, audience=GATEWAY + "/v1"),
        token_endpoint=GATEWAY + "/oauth/token",
        citizen_verifier=CitizenTokenVerifier(
            issuer=IDP, audience=GATEWAY, keys={IDP_KEY.public_key.key_id: IDP_KEY.public_key}
        ),
    )
    flask_app.register_blueprint(citizen_blueprint(gateway, env.store))
    try:
        yield CitizenApp(flask_app.test_client(), env, log)
    finally:
        log.close()
        env.store.engine.dispose()
        env.store.registry.engine.dispose()


def _slug(resp) -> str:
    assert resp.mimetype == "application/problem+json"
    problem_type: str = resp.json["type"]
    return problem_type.removeprefix(PROBLEM_BASE)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/consents"),
        ("GET", "/v1/consents/AAAAAAAAAAAAAAAAAAAAAA"),
        ("DELETE", "/v1/consents/AAAAAAAAAAAAAAAAAAAAAA"),
        ("GET", "/v1/me/consents"),
        ("GET", "/v1/me/access-log"),
    ],
)
def test_every_endpoint_needs_a_citizen_token(app: CitizenApp, method, path):
    resp = app.call(method, path, who=None, json=GRANT)

    assert resp.status_code == 401 and _slug(resp) == "token-missing"
    forged = app.call(method, path, who=None, headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401


def test_grant_read_list_revoke(app: CitizenApp):
    created = app.call("POST", "/v1/consents", json=GRANT)

    assert created.status_code == 201
    consent = created.json
    assert created.headers["Location"] == f"/v1/consents/{consent['id']}"
    assert consent["status"] == "ACTIVE" and consent["uses"] == 0 and consent["max_uses"] == 3
    assert consent["subject_masked"] == mask(ME) and consent["granted_by"] == "subject"
    assert consent["artefact"].count(".") == 2

    read = app.call("GET", created.headers["Location"])
    assert read.status_code == 200 and read.json == consent
    listed = app.call("GET", "/v1/me/consents")
    assert [c["id"] for c in listed.json["consents"]] == [consent["id"]]

    revoked = app.call("DELETE", created.headers["Location"])
    assert revoked.status_code == 200 and revoked.json["status"] == "REVOKED"
    assert revoked.json["revoked_at"] is not None
    again = app.call("DELETE", created.headers["Location"])
    assert again.status_code == 409 and _slug(again) == "consent-not-active"
    kinds = [e.entry["kind"] for e in app.log.entries({}, newest_first=False)[0]]
    assert kinds == ["consent_granted", "consent_revoked"]


def test_someone_elses_consent_is_not_found(app: CitizenApp):
    location = app.call("POST", "/v1/consents", json=GRANT).headers["Location"]

    for method in ("GET", "DELETE"):
        resp = app.call(method, location, who=NEIGHBOUR)
        assert resp.status_code == 404 and _slug(resp) == "not-found"
    assert app.call("GET", "/v1/me/consents", who=NEIGHBOUR).json == {"consents": []}
    assert app.call("GET", location).json["status"] == "ACTIVE"


def test_guardian_grants_for_a_child_who_can_read_it(app: CitizenApp):
    created = app.call("POST", "/v1/consents", json={**GRANT, "subject": CHILD})

    assert created.status_code == 201 and created.json["granted_by"] == "guardian"
    assert created.json["subject_masked"] == mask(CHILD)
    assert app.call("GET", created.headers["Location"], who=CHILD).status_code == 200
    assert app.env.guardians.calls == [(ME, CHILD)]


def test_not_a_guardian_is_forbidden(app: CitizenApp):
    from tongban.primitives.wire import Tri

    app.env.guardians.verdict = Tri.FALSE

    resp = app.call("POST", "/v1/consents", json={**GRANT, "subject": CHILD})

    assert resp.status_code == 403 and _slug(resp) == "not-a-guardian"


@pytest.mark.parametrize(
    ("kwargs", "status", "slug"),
    [
        ({"data": b"{not json", "content_type": "application/json"}, 400, "malformed-json"),
        ({"data": b"null", "content_type": "application/json"}, 400, "bad-request"),
        ({"json": ["a", "list"]}, 400, "bad-request"),
        ({"json": {**GRANT, "requester": "nobody-here"}}, 400, "unknown-requester"),
        ({"json": {**GRANT, "claims": ["married"]}}, 400, "claim-not-for-purpose"),
        ({"json": {**GRANT, NEIGHBOUR: "x"}}, 400, "bad-request"),
        ({"json": {**GRANT, "subject": NEIGHBOUR}}, 403, "subject-not-a-minor"),
        (
            {"data": b'{"a": "' + b"x" * MAX_BODY + b'"}', "content_type": "application/json"},
            413,
            "payload-too-large",
        ),
    ],
)
def test_bad_grants_are_problems(app: CitizenApp, kwargs, status, slug):
    resp = app.call("POST", "/v1/consents", **kwargs)

    assert resp.status_code == status and _slug(resp) == slug
    assert resp.json["instance"] and resp.headers["X-Request-Id"] == resp.json["instance"]
    assert app.call("GET", "/v1/me/consents").json == {"consents": []}


def _seed(log: AuditLog) -> None:
    def check(requester: str, time: str, result: str, **extra: object) -> dict[str, object]:
        return {
            "kind": "check",
            "requester": requester,
            "claim": "maternity_insurance_active",
            "purpose": "insurance_claim",
            "result": result,
            "time": time,
            **extra,
        }

    events = AuditEvents(log)
    events.append({"kind": "lifecycle", "event": "gateway_started"})
    log.append(check("insurer-a", "2026-03-01T09:00:00.000Z", "yes", consent_id="c1"), ME)
    log.append(check("insurer-a", "2026-03-01T09:01:00.000Z", "yes"), NEIGHBOUR)
    log.append(
        {"kind": "officer_lookup", "requester": "privacy-officer",
         "time": "2026-03-01T09:02:00.000Z"},
        subject_id=ME,
    )  # fmt: skip
    log.append(
        check("edu-bureau", "2026-03-01T09:03:00.000Z", "no",
              claim="household_in_district", purpose="school_enrollment",
              params={"district": "150622"}, legal_basis="PIPL art. 13(1)(3)",
              decision={"allowed": True, "rule": [], "policy_version": "v", "reason": None}),
        ME,
    )  # fmt: skip
    log.append(
        check("insurer-a", "2026-03-01T09:04:00.000Z", "denied", consent_id="c1",
              error="consent-revoked", decision={"allowed": True}),
        ME,
    )  # fmt: skip
    events.append({"kind": "consent_granted", "consent_id": "c2"}, subject_id=ME)


def test_access_log_shows_only_my_checks_and_lookups(app: CitizenApp):
    _seed(app.log)

    resp = app.call("GET", "/v1/me/access-log")

    assert resp.status_code == 200 and resp.json["next"] is None
    entries = resp.json["entries"]
    assert [e["index"] for e in entries] == [5, 4, 3, 1]
    denied, legal, lookup, consented = entries
    assert denied == {
        "index": 5,
        "time": "2026-03-01T09:04:00.000Z",
        "kind": "check",
        "requester": "insurer-a",
        "requester_name": "Insurer A",
        "claim": "maternity_insurance_active",
        "purpose": "insurance_claim",
        "result": "denied",
        "decision": "denied",
        "consent_id": "c1",
        "reason": "consent-revoked",
    }
    assert legal["legal_basis"] == "PIPL art. 13(1)(3)" and legal["result"] == "no"
    assert legal["decision"] == "allowed" and legal["params"] == {"district": "150622"}
    assert legal["requester_name"] == "Education Bureau"
    assert lookup == {
        "index": 3,
        "time": "2026-03-01T09:02:00.000Z",
        "kind": "officer_lookup",
        "requester": "privacy-officer",
        "requester_name": None,
    }
    assert consented["consent_id"] == "c1" and consented["decision"] == "allowed"
    neighbour = app.call("GET", "/v1/me/access-log", who=NEIGHBOUR).json["entries"]
    assert [e["index"] for e in neighbour] == [2]


def test_access_log_pages_follow_the_cursor(app: CitizenApp):
    _seed(app.log)
    seen: list[int] = []
    query = "/v1/me/access-log?limit=1"

    for _ in range(10):
        page = app.call("GET", query).json
        seen += [e["index"] for e in page["entries"]]
        if page["next"] is None:
            break
        query = f"/v1/me/access-log?limit=1&cursor={page['next']}"

    assert seen == [5, 4, 3, 1]
    two = app.call("GET", "/v1/me/access-log?limit=2&cursor=5").json
    assert [e["index"] for e in two["entries"]] == [4, 3] and two["next"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=-1",
        "cursor=1e3",
        "limit=%C2%B2",
        "limit=%EF%BC%91",
    ],
)
def test_access_log_refuses_bad_paging(app: CitizenApp, query):
    resp = app.call("GET", f"/v1/me/access-log?{query}")

    assert resp.status_code == 400 and _slug(resp) == "bad-request"
