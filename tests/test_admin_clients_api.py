"""Requesters registered through the API by two administrators (``/v1/admin/clients``,
``/v1/admin/changes/{id}/approve``): a ``private_key_jwt`` client with an SM2 JWK Set, inline
or at a URL, gets a token and a correct signed answer; disabled, its next check is refused;
re-enabled by two administrators, it works again. Every step is audited; a refused step
changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tongban_client import verify_answer
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tongban.gateway.client_changes import fetch_jwks
from tongban.gateway.oauth import sign_client_assertion
from tongban.primitives.errors import PROBLEM_BASE, BadRequest
from tongban.primitives.gm import SM2PrivateKey

from .conftest import Generated
from .gateway_harness import PUBLIC_URL, Harness, build_harness

TOKEN_URL = PUBLIC_URL + "/oauth/token"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def h(
    tmp_path: Any,
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    gateway_stores: dict[str, str],
) -> Iterator[Harness]:
    harness = build_harness(tmp_path, small_population.urls, party_keys, **gateway_stores)
    try:
        yield harness
    finally:
        harness.close()


def _post(h: Harness, url: str, admin: str, body: Any = None) -> Any:
    return h.client.post(url, json=body, headers=h.auth(admin))


def _type(resp: Any) -> str:
    return str(resp.get_json()["type"]).removeprefix(PROBLEM_BASE)


def _token(h: Harness, client_id: str, key: SM2PrivateKey, kid: str) -> Any:
    assertion = sign_client_assertion(key, client_id, TOKEN_URL, kid=kid)
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION,
            "client_assertion": assertion}  # fmt: skip
    return h.client.post("/oauth/token", data=form)


def _no_token(resp: Any) -> bool:
    """The token endpoint refused the client (RFC 6749: 400 for a client assertion)."""
    return resp.status_code in (400, 401) and resp.get_json()["error"] == "invalid_client"


def _check(h: Harness, number: str, token: str) -> Any:
    body = {"subject": {"id_number": number}, "claim": "birth_registered",
            "purpose": "school_enrollment", "params": {}}  # fmt: skip
    return h.client.post("/v1/checks", json=body, headers={"Authorization": f"Bearer {token}"})


def _audited(h: Harness, kind: str) -> list[dict[str, Any]]:
    assert h.gateway.audit is not None
    rows, _ = h.gateway.audit.entries({"kind": kind}, limit=50)
    return [r.entry for r in rows]


def _propose(h: Harness, key: SM2PrivateKey, client_id: str = "school-42", **extra: Any) -> Any:
    body = {"client_id": client_id, "role": "education", "scopes": ["checks"],
            "jwks": {"keys": [key.public_key.to_jwk(kid="k1")]}, **extra}  # fmt: skip
    return _post(h, "/v1/admin/clients", "admin-1", body)


def test_two_administrators_register_a_client_that_gets_correct_signed_answers(
    h: Harness, small_population: Generated
):
    key = SM2PrivateKey.generate()
    proposed = _propose(h, key, display_name="No. 42 Primary School")
    assert proposed.status_code == 202, proposed.get_data(as_text=True)
    change_id = proposed.get_json()["change_id"]
    # Pending: no token yet, and the change is listed with its keys for the reviewer.
    assert _no_token(_token(h, "school-42", key, "k1"))
    listed = h.client.get("/v1/admin/changes", headers=h.auth("admin-2")).get_json()["changes"]
    (pending,) = [c for c in listed if c["id"] == change_id]
    assert pending["kind"] == "client" and pending["proposer"] == "admin-1"
    assert pending["change"]["spec"]["jwks"]["keys"][0]["kid"] == "k1"
    assert "d" not in pending["change"]["spec"]["jwks"]["keys"][0]

    approve = f"/v1/admin/changes/{change_id}/approve"
    own = _post(h, approve, "admin-1")
    assert (own.status_code, _type(own)) == (403, "two-person-rule")
    before = h.gateway.checker.enforcer.version if h.gateway.checker else None
    done = _post(h, approve, "admin-2")
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.get_json()["kind"] == "client" and done.get_json()["status"] == "approved"
    assert done.get_json()["policy_version"] != before  # the role's grouping rule came with it
    again = _post(h, approve, "admin-2")
    assert (again.status_code, _type(again)) == (409, "policy-change-not-pending")

    # The new client: a token by its SM2 key, a signed answer that verifies offline and
    # agrees with what another requester of the same role is told.
    token = _token(h, "school-42", key, "k1")
    assert token.status_code == 200, token.get_data(as_text=True)
    access = token.get_json()["access_token"]
    jwks = h.client.get("/.well-known/jwks.json").get_json()
    numbers = [str(r["id_number"]) for r in small_population.subjects()[:6]]
    for number in numbers:
        mine = _check(h, number, access)
        assert mine.status_code == 200, mine.get_data(as_text=True)
        claims = verify_answer(mine.get_json()["answer"], jwks, audience="school-42")
        reference = h.check("edu-bureau", {"subject": {"id_number": number},
                            "claim": "birth_registered", "purpose": "school_enrollment",
                            "params": {}}).get_json()  # fmt: skip
        assert claims["result"] == mine.get_json()["result"] == reference["result"]

    proposals = _audited(h, "client.change.proposed")
    approvals = _audited(h, "client.change.approved")
    assert [e["change_id"] for e in proposals] == [change_id]
    assert approvals[0]["admin"] == "admin-2" and approvals[0]["proposer"] == "admin-1"
    assert approvals[0]["client_id"] == "school-42"

    # Disabled by one administrator: its live token stops at the next request.
    off = _post(h, "/v1/admin/clients/school-42/disable", "admin-1")
    assert off.status_code == 200 and off.get_json()["enabled"] is False
    refused = _check(h, numbers[0], access)
    assert refused.status_code == 401, refused.get_data(as_text=True)
    assert _no_token(_token(h, "school-42", key, "k1"))
    assert [e["client_id"] for e in _audited(h, "client.disabled")] == ["school-42"]
    clients = h.client.get("/v1/admin/clients", headers=h.auth("admin-1")).get_json()["clients"]
    (row,) = [c for c in clients if c["client_id"] == "school-42"]
    assert row["enabled"] is False and row["kids"] == ["k1"] and row["alg"] == "SM2"
    assert all(set(c) == set(row) for c in clients)  # never a secret or its hash
    assert "hmac-sm3" not in json.dumps(clients) and "scrypt" not in json.dumps(clients)

    # Re-enabled: a change of its own, under the two-person rule.
    enable = _post(h, "/v1/admin/clients/school-42/enable", "admin-1")
    assert enable.status_code == 202
    assert _no_token(_token(h, "school-42", key, "k1"))  # still off while pending
    back = _post(h, f"/v1/admin/changes/{enable.get_json()['change_id']}/approve", "admin-2")
    assert back.status_code == 200 and back.get_json()["kind"] == "client-enable"
    fresh = _token(h, "school-42", key, "k1").get_json()["access_token"]
    assert _check(h, numbers[0], fresh).status_code == 200


def test_refused_proposals_and_approvals_change_nothing(h: Harness):
    key = SM2PrivateKey.generate()
    es = {"kty": "EC", "crv": "P-256", "kid": "e1",
          "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
          "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}  # fmt: skip
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"jwks": {"keys": []}}, 400, "bad-request"),
        ({"jwks": {"keys": [key.public_key.to_jwk(kid="k1"), es]}}, 400, "bad-request"),
        ({"jwks": {"keys": [{"kty": "EC", "crv": "SM2", "kid": "k1", "x": "AA", "y": "AA"}]}},
         400, "bad-request"),
        ({"role": "no-such-role"}, 400, "invalid-policy"),
        ({"client_id": "edu-bureau"}, 409, "policy-change-conflict"),
        ({"scopes": ["everything"]}, 400, "bad-request"),
        ({"jwks_uri": "http://gw.example/jwks.json"}, 400, "bad-request"),  # both sources
        ({"unknown": 1}, 400, "bad-request"),
    ]  # fmt: skip
    for extra, status, slug in cases:
        resp = _propose(h, key, **extra)
        assert (resp.status_code, _type(resp)) == (status, slug), (extra, resp.get_json())
        assert "AA" not in resp.get_json()["detail"]
    only_uri = {"client_id": "school-43", "role": "education", "scopes": ["checks"],
                "jwks_uri": "http://gw.example/jwks.json"}  # fmt: skip
    resp = _post(h, "/v1/admin/clients", "admin-1", only_uri)
    assert (resp.status_code, _type(resp)) == (400, "bad-request")
    assert resp.get_json()["detail"].startswith("jwks_uri: ")  # refused, nothing fetched
    # The production fetcher takes https only (http to loopback aside), checked before
    # any connection is made.
    with pytest.raises(BadRequest, match="expected an https URL"):
        fetch_jwks("http://gw.example/jwks.json")
    assert _audited(h, "client.change.proposed") == []
    no_admin = h.client.post("/v1/admin/clients", json={}, headers=h.auth("edu-bureau"))
    assert (no_admin.status_code, _type(no_admin)) == (403, "insufficient-scope")

    # A client registered another way between proposal and approval: the approval is
    # refused, and neither the policy nor the pending change moved.
    proposed = _propose(h, key, client_id="school-44").get_json()["change_id"]
    assert h.gateway.oauth is not None
    h.gateway.oauth.registry.register_client("school-44", "other", scopes=["checks"])
    assert h.gateway.checker is not None
    version = h.gateway.checker.enforcer.version
    refused = _post(h, f"/v1/admin/changes/{proposed}/approve", "admin-2")
    assert (refused.status_code, _type(refused)) == (409, "policy-change-conflict")
    assert h.gateway.checker.enforcer.version == version
    changes = h.client.get("/v1/admin/changes", headers=h.auth("admin-1")).get_json()["changes"]
    assert [c["id"] for c in changes] == [proposed]
    assert _audited(h, "client.change.approved") == []
    withdrawn = _post(h, f"/v1/admin/changes/{proposed}/reject", "admin-1")
    assert withdrawn.status_code == 200 and withdrawn.get_json()["status"] == "rejected"
    unknown = _post(h, "/v1/admin/clients/nobody-here/disable", "admin-1")
    assert (unknown.status_code, _type(unknown)) == (404, "not-found")


@contextlib.contextmanager
def _jwks_server(doc: dict[str, Any]) -> Iterator[str]:
    @Request.application
    def app(request: Request) -> Response:
        return Response(json.dumps(doc), mimetype="application/json")

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_jwks_uri_is_fetched_when_proposed_so_the_approver_sees_the_keys(h: Harness):
    key = SM2PrivateKey.generate()
    with _jwks_server({"keys": [key.public_key.to_jwk(kid="u1")]}) as url:
        body = {"client_id": "school-45", "role": "education", "scopes": ["checks"],
                "jwks_uri": url}  # fmt: skip
        proposed = _post(h, "/v1/admin/clients", "admin-1", body)
    assert proposed.status_code == 202, proposed.get_data(as_text=True)
    change_id = proposed.get_json()["change_id"]
    listed = h.client.get("/v1/admin/changes", headers=h.auth("admin-2")).get_json()["changes"]
    spec = next(c for c in listed if c["id"] == change_id)["change"]["spec"]
    assert spec["jwks_uri"] == url and [k["kid"] for k in spec["jwks"]["keys"]] == ["u1"]
    # The server is gone: what is approved is what was reviewed, not what the URL says now.
    assert _post(h, f"/v1/admin/changes/{change_id}/approve", "admin-2").status_code == 200
    assert _token(h, "school-45", key, "u1").status_code == 200
