"""What a newcomer's first mistakes get back, over HTTP: a body that is not JSON apart from
JSON of the wrong shape, an unknown claim pointing to the list of claims, an enumerated
parameter listing its values, and a spoofed ``Host`` at the token endpoint as a 400
problem, never a 500. None of them repeats what was sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tongban.primitives.errors import PROBLEM_BASE

from .hostile_harness import ADULT, Hostile, build_hostile, check_body

JSON_OPERATIONS = {  # path -> who may call it
    "/v1/checks": "edu-bureau",
    "/v1/checks/batch": "edu-bureau",
    "/v1/consents": "citizen",
    "/v1/admin/policy/changes": "admin-1",
    "/v1/statistics": "analyst",
    "/v1/federation/jobs": "fed-admin",
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    h = build_hostile(tmp_path_factory.mktemp("request-problems"))
    yield h
    h.close()


def _auth(gw: Hostile, who: str) -> dict[str, str]:
    return gw.citizen() if who == "citizen" else gw.auth(who)


def _problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    body = resp.get_json()
    assert resp.status_code == status, body
    assert resp.mimetype == "application/problem+json"
    assert body["type"] == PROBLEM_BASE + slug, body
    assert ADULT not in resp.get_data(as_text=True)
    return dict(body)


def _post(gw: Hostile, path: str, data: bytes | str, content_type: str = "application/json") -> Any:
    headers = {**_auth(gw, JSON_OPERATIONS[path]), "Content-Type": content_type}
    return gw.client.post(path, data=data, headers=headers)


# --- malformed JSON is not "expected a JSON object" -------------------------------------


@pytest.mark.parametrize("path", list(JSON_OPERATIONS))
@pytest.mark.parametrize(
    ("data", "where"),
    [
        ('{"subject": {"id_number": "' + ADULT + '"', "line 1, column 47"),  # cut short
        (
            '{\n  "claim": "birth_registered",\n  "purpose": school_enrollment\n}',
            "line 3, column 14",
        ),
        ("{'claim': 'x'}", "line 1, column 2"),
        ('{"a": 1} {"b": 2}', "line 1, column 10"),
    ],
)
def test_a_body_that_is_not_json_says_where_parsing_stopped(
    gw: Hostile, path: str, data: str, where: str
):
    problem = _problem(_post(gw, path, data), 400, "malformed-json")
    assert problem["detail"] == f"body: not valid JSON ({where})"
    assert problem["title"] == "Request body is not valid JSON"


@pytest.mark.parametrize("path", list(JSON_OPERATIONS))
def test_an_empty_or_undecodable_body_is_malformed_json(gw: Hostile, path: str):
    assert _problem(_post(gw, path, b""), 400, "malformed-json")["detail"] == (
        "body: empty; expected a JSON document"
    )
    problem = _problem(_post(gw, path, b'{"claim": "\xff\xfe"}'), 400, "malformed-json")
    assert problem["detail"] == "body: not valid JSON (expected UTF-8 text)"


@pytest.mark.parametrize("path", list(JSON_OPERATIONS))
@pytest.mark.parametrize("data", ["[]", '"birth_registered"', "3", "true", "null"])
def test_valid_json_of_the_wrong_shape_is_a_bad_request_not_malformed(
    gw: Hostile, path: str, data: str
):
    slug = "invalid-policy" if path == "/v1/admin/policy/changes" else "bad-request"
    problem = _problem(_post(gw, path, data), 400, slug)  # invalid-policy extends bad-request
    assert re.search("expected (a JSON object|an object)", problem["detail"]), problem
    assert "not valid JSON" not in problem["detail"]


@pytest.mark.parametrize("path", [p for p in JSON_OPERATIONS if p != "/v1/consents"])
def test_a_body_not_sent_as_json_says_so(gw: Hostile, path: str):
    problem = _problem(_post(gw, path, "{}", "text/plain"), 400, "bad-request")
    assert problem["detail"] == "body: expected JSON (Content-Type: application/json)"


def test_the_consent_form_takes_json_whatever_its_content_type(gw: Hostile):
    """Browsers' fetch() often posts text/plain; the consent endpoint has always parsed it."""
    problem = _problem(_post(gw, "/v1/consents", "{nope", "text/plain"), 400, "malformed-json")
    assert problem["detail"] == "body: not valid JSON (line 1, column 2)"


def test_the_adapter_witness_endpoint_reports_malformed_json_too(gw: Hostile):
    from flask import Flask, jsonify, request

    from tongban.http_shell import install_problem_handlers

    app = Flask("t")
    install_problem_handlers(app, 1024, __import__("logging").getLogger("t"))

    @app.post("/echo")
    def echo() -> Any:
        return jsonify(request.get_json())

    client = app.test_client()
    resp = client.post("/echo", data="[1,", headers={"Content-Type": "application/json"})
    assert resp.get_json()["type"] == PROBLEM_BASE + "malformed-json"
    assert client.post("/echo", json=[1]).get_json() == [1]


# --- unknown claims and enumerated parameters -------------------------------------------


def test_an_unknown_claim_points_to_get_v1_claims(gw: Hostile):
    edu = gw.auth("edu-bureau")
    resp = gw.client.post("/v1/checks", json=check_body(claim=ADULT), headers=edu)
    problem = _problem(resp, 400, "unknown-claim")
    assert problem["detail"] == "claim: not in the catalog; GET /v1/claims lists the claims"
    assert problem["claims"] == "/v1/claims"
    listed = gw.client.get(problem["claims"], headers=edu)
    assert listed.status_code == 200
    assert "birth_registered" in {c["name"] for c in listed.get_json()["claims"]}


def test_an_enumerated_parameter_lists_its_values(gw: Hostile):
    body = check_body(claim="household_in_district", params={"district": ADULT})
    resp = gw.client.post("/v1/checks", json=body, headers=gw.auth("edu-bureau"))
    problem = _problem(resp, 400, "unknown-parameter")
    assert problem["parameter"] == "district"
    assert "150102" in problem["allowed"] and len(problem["allowed"]) == 8
    assert problem["detail"] == "params.district: expected one of " + ", ".join(problem["allowed"])


def test_an_unknown_purpose_lists_the_purposes(gw: Hostile):
    body = check_body(purpose="marketing")
    resp = gw.client.post("/v1/checks", json=body, headers=gw.auth("edu-bureau"))
    problem = _problem(resp, 400, "unknown-purpose")
    assert "school_enrollment" in problem["allowed"]
    assert "marketing" not in resp.get_data(as_text=True)


def test_the_new_members_are_in_the_problem_schema(gw: Hostile):
    spec = gw.client.get("/openapi.json").get_json()
    members = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"parameter", "allowed", "claims", "statistics"} <= set(members)
    slugs = {p["slug"] for p in spec["x-problem-types"]}
    assert {"malformed-json", "insecure-transport"} <= slugs
    for path in JSON_OPERATIONS:
        problem = spec["paths"][path]["post"]["responses"]["400"]["content"]
        types = problem["application/problem+json"]["schema"]["allOf"][1]["properties"]
        assert PROBLEM_BASE + "malformed-json" in types["type"]["enum"], path


# --- a spoofed Host at the token endpoint -----------------------------------------------


def _token(gw: Hostile, headers: dict[str, str], base_url: str = "http://localhost") -> Any:
    return gw.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={**gw.basic("edu-bureau"), **headers},
        base_url=base_url,
    )


SPOOFED_HOSTS = [
    {"Host": "evil.example"},
    {"Host": "evil.example:8443"},
    {"Host": "gw.test"},  # even the configured name, over plain HTTP
    {"Host": "localhost.evil.example"},
    {"Host": "evil.example", "X-Forwarded-Proto": "https"},  # forwarded headers not trusted
    {"Host": "evil.example", "X-Forwarded-Host": "localhost", "X-Forwarded-For": "127.0.0.1"},
    {"Host": "evil.example", "Forwarded": "proto=https;host=gw.test"},
]


@pytest.mark.parametrize("headers", SPOOFED_HOSTS, ids=lambda h: "|".join(h.values()))
def test_a_spoofed_host_is_a_400_problem_not_a_500(
    gw: Hostile, headers: dict[str, str], caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    problem = _problem(_token(gw, headers), 400, "insecure-transport")
    assert problem["title"] == "The token endpoint needs HTTPS"
    assert "evil" not in problem["detail"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Forwarded-Host": "evil.example"},
        {"X-Forwarded-Proto": "http", "X-Forwarded-For": "203.0.113.9"},
        {"Host": "127.0.0.1:8080"},
    ],
    ids=["plain", "xfh", "xfp", "loopback"],
)
def test_forwarded_headers_alone_change_nothing(gw: Hostile, headers: dict[str, str]):
    resp = _token(gw, headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["token_type"].lower() == "bearer"


def test_any_host_over_https_is_served(gw: Hostile):
    resp = _token(gw, {}, base_url="https://evil.example")
    assert resp.status_code == 200, resp.get_data(as_text=True)


@pytest.mark.parametrize("host", ["evil.example", "[::1", "evil.example:1"])
def test_no_other_entry_point_fails_on_a_spoofed_host(gw: Hostile, host: str):
    """Bearer and citizen endpoints, and the officer page's login (which calls the token
    endpoint in-process), do not depend on the Host header."""
    edu = {**gw.auth("edu-bureau"), "Host": host}
    assert gw.client.get("/v1/claims", headers=edu).status_code == 200
    check = gw.client.post("/v1/checks", json=check_body(), headers=edu)
    assert check.status_code == 200, check.get_data(as_text=True)
    me = gw.client.get("/v1/me/access-log", headers={**gw.citizen(), "Host": host})
    assert me.status_code == 200, me.get_data(as_text=True)

    page = gw.app.test_client()
    form = page.get("/officer/login", headers={"Host": host}).get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', form)
    assert found, form
    login = page.post(
        "/officer/login",
        data={"csrf": found.group(1), "client_id": "privacy-officer",
              "secret": gw.secrets["privacy-officer"]},
        headers={"Host": host},
    )  # fmt: skip
    assert login.status_code == 302, login.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/oauth/token", "/v1/claims", "/officer/login"])
def test_a_host_that_is_not_a_host_name_is_a_400_problem(gw: Hostile, path: str):
    headers = {**gw.basic("edu-bureau"), "Host": "a" * 300}
    if path == "/oauth/token":
        resp = gw.client.post(path, data={"grant_type": "client_credentials"}, headers=headers)
    else:
        resp = gw.client.get(path, headers=headers)
    problem = _problem(resp, 400, "bad-request")
    assert "a" * 20 not in problem["detail"]
