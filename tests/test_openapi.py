"""/openapi.json and /docs: the document is valid OpenAPI 3.1, names exactly the routes a
real gateway serves, lists every problem type of the error tree, and describes what the
gateway actually answers (real responses validated against the documented schemas)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from tongban.gateway.openapi import ERROR_MODULES, build_openapi, docs_blueprint, problem_types
from tongban.gateway.openapi_schemas import ID_NUMBER_PATTERN
from tongban.primitives.errors import PROBLEM_BASE, TongbanError
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id

from .hostile_harness import Hostile, build_hostile

ROOT = Path(__file__).resolve().parent.parent
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
CLIENTS: dict[str, tuple[str, ...]] = {
    "edu-bureau": ("checks", "checks:batch"),
    "insurer-a": ("checks",),
    "privacy-officer": ("audit:read",),
    "admin-1": ("admin",),
    "admin-2": ("admin",),
    "analyst": ("statistics", "federation"),
}
ADULT = make_id("110105", dt.date(1990, 5, 17), 123)
OTHER_ADULT = make_id("150622", dt.date(1985, 1, 2), 456)
CHILD = make_id("110105", dt.date(2018, 3, 4), 12)
BAD_CHECK_DIGIT = CHILD[:-1] + ("1" if CHILD[-1] == "0" else "0")


Served = Hostile


def build_served(tmp: Path) -> Served:
    """A whole gateway as ``tongban serve`` builds it, with no department connected (every
    answer is ``undetermined``): enough to exercise every route."""
    return build_hostile(tmp, clients=CLIENTS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = build_served(tmp_path_factory.mktemp("openapi"))
    yield s
    s.gateway.close()


@pytest.fixture(scope="module")
def spec(served: Served) -> dict[str, Any]:
    resp = served.client.get("/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.get_json()
    return doc


# --- the document itself ----------------------------------------------------------------


def test_document_validates_as_openapi_31(spec: dict[str, Any]):
    validator = pytest.importorskip("openapi_spec_validator")
    assert spec["openapi"] == "3.1.0"
    validator.validate(spec)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method, path, item[method]


def test_structure_without_a_validator(spec: dict[str, Any]):
    """What openapi-spec-validator would catch, and a few house rules it would not."""
    assert spec["openapi"] == "3.1.0"
    assert {"title", "version"} <= set(spec["info"])
    for ref in _refs(spec):
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in spec["components"][kind], ref
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))
    schemes = spec["components"]["securitySchemes"]
    scopes = set(schemes["oauth2"]["flows"]["clientCredentials"]["scopes"])
    assert {"checks", "checks:batch", "audit:read", "admin", "statistics"} <= scopes
    assert schemes["citizenToken"] == schemes["citizenToken"] | {"type": "http", "scheme": "bearer"}
    for method, path, op in _operations(spec):
        assert op["tags"] and op["summary"], (method, path)
        assert "500" in op["responses"], (method, path)
        for requirement in op["security"]:
            for name, wanted in requirement.items():
                assert name in schemes, (method, path, name)
                assert set(wanted) <= scopes
        for name in re.findall(r"{([a-z_]+)}", path):
            declared = spec["paths"][path].get("parameters", []) + op.get("parameters", [])
            assert any(p["in"] == "path" and p["name"] == name for p in declared), path


def test_request_bodies_refuse_unknown_fields(spec: dict[str, Any]):
    schemas = spec["components"]["schemas"]
    seen = 0
    for method, path, op in _operations(spec):
        for media, body in op.get("requestBody", {}).get("content", {}).items():
            schema = schemas[body["schema"]["$ref"].split("/")[-1]]
            assert schema["additionalProperties"] is False, (method, path, media)
            assert schema.get("required") or schema.get("anyOf"), (method, path)
            seen += 1
    # token, check, batch, consent grant, policy change, statistic, federation, audit search,
    # client proposal
    assert seen == 9
    assert schemas["Subject"]["additionalProperties"] is False
    assert schemas["BatchSubject"]["additionalProperties"] is False


def test_enumerations_come_from_the_catalog(spec: dict[str, Any], served: Served):
    catalog = served.gateway.catalog
    schemas = spec["components"]["schemas"]
    assert schemas["ClaimName"]["enum"] == sorted(catalog.claims)
    assert schemas["PurposeName"]["enum"] == sorted(catalog.purposes)
    assert schemas["IdNumber"]["pattern"] == ID_NUMBER_PATTERN == "^[0-9]{17}[0-9Xx]$"
    rules = {
        r["if"]["properties"]["claim"]["const"]: r["then"] for r in schemas["CheckRequest"]["allOf"]
    }
    assert set(rules) == set(catalog.claims)
    for name, claim in catalog.claims.items():
        params = rules[name]["properties"]["params"]
        assert params["additionalProperties"] is False
        assert {p: s["enum"] for p, s in params["properties"].items()} == {
            p: list(v) for p, v in claim.params.items()
        }
        assert ("params" in rules[name].get("required", [])) == bool(claim.params)
    assert schemas["CheckRequest"]["allOf"] == schemas["BatchRequest"]["allOf"]


def test_catalog_argument_changes_the_document(served: Served):
    """The enumerations follow the catalog the gateway enforces, not a copy."""
    from tongban.gateway.catalog import Catalog

    catalog = served.gateway.catalog
    smaller = Catalog({"married": catalog.claims["married"]}, catalog.purposes)
    doc = build_openapi("", catalog=smaller)
    assert doc["components"]["schemas"]["ClaimName"]["enum"] == ["married"]
    assert doc["servers"] == [{"url": "/"}]
    assert (
        doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]["tokenUrl"]
        == "/oauth/token"
    )


# --- routes ----------------------------------------------------------------------------


def served_operations(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue  # Flask's implicit /static/<path:filename>: no files, not part of the API
        path = re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            out.add((method.lower(), path))
    return out


def test_every_served_route_is_documented_and_vice_versa(served: Served, spec: dict[str, Any]):
    served_ops = served_operations(served.app)
    documented = {(m, p) for m, p, _ in _operations(spec)}
    assert served_ops - documented == set(), "served but undocumented"
    assert documented - served_ops == set(), "documented but not served"


# --- problem types ---------------------------------------------------------------------


def _walked_slugs() -> set[str]:
    for name in ERROR_MODULES:
        importlib.import_module(name)
    found: set[str] = set()
    stack: list[type[TongbanError]] = [TongbanError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__ in ERROR_MODULES:
            found.add(cls.slug)
    return found


def _slugs_in_source() -> dict[str, Path]:
    found: dict[str, Path] = {}
    pattern = re.compile(r'^\s+slug(?:: ClassVar\[str\])? = "([^"]+)"', re.M)
    for package in ("gateway", "adapters", "policies", "audit", "primitives", "federation"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for slug in pattern.findall(path.read_text("utf-8")):
                found[slug] = path
    return found


def test_problem_types_are_the_walked_error_tree(spec: dict[str, Any]):
    listed = {p["slug"] for p in spec["x-problem-types"]}
    assert listed == _walked_slugs()
    for p in spec["x-problem-types"]:
        assert p["type"] == PROBLEM_BASE + p["slug"]
        assert 400 <= p["status"] <= 599 and p["title"]
        assert p.get("extends", PROBLEM_BASE).startswith(PROBLEM_BASE)


def test_every_slug_in_the_source_is_a_listed_problem_type(spec: dict[str, Any]):
    in_source = _slugs_in_source()
    assert len(in_source) >= 50
    listed = {p["slug"] for p in spec["x-problem-types"]}
    missing = {
        slug: str(path.relative_to(ROOT)) for slug, path in in_source.items() if slug not in listed
    }
    assert missing == {}, "add the defining module to gateway.openapi.ERROR_MODULES"
    # Every module that defines a slug is listed, so the document does not depend on what
    # else a process happened to import.
    modules = {"tongban." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
               for p in in_source.values()}  # fmt: skip
    assert modules <= set(ERROR_MODULES), modules - set(ERROR_MODULES)
    assert {"internal", "consent-required", "token-replayed", "policy-denied"} <= listed


def test_operation_problem_types_are_listed_types(spec: dict[str, Any]):
    listed = {p["type"]: p["status"] for p in spec["x-problem-types"]}
    for method, path, op in _operations(spec):
        for status, resp in op["responses"].items():
            content = resp.get("content", {}).get("application/problem+json")
            if content is None:
                continue
            narrowed = content["schema"]["allOf"][1]["properties"]
            assert narrowed["status"]["const"] == int(status)
            for uri in narrowed["type"]["enum"]:
                assert listed.get(uri) == int(status), (method, path, uri)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": 409}, "changes status or title"),
        ({"slug": "not-found", "title": "Again"}, "defined twice"),
    ],
)
def test_contradictory_error_classes_are_refused(body: dict[str, Any], message: str):
    """A subclass that reuses a slug with another meaning cannot reach the document."""
    import gc

    from tongban.primitives.errors import BadRequest

    rogue = type("Rogue", (BadRequest,), {**body, "__module__": "tongban.gateway.checks"})
    try:
        with pytest.raises(ValueError, match=message):
            problem_types()
    finally:
        del rogue
        gc.collect()
    assert "Rogue" not in {c.__name__ for c in BadRequest.__subclasses__()}


def test_a_fake_error_class_defined_outside_the_packages_is_not_listed():
    class Fake(TongbanError):
        status = 418
        slug = "fake-test-only"
        title = "Not ours"

    assert "fake-test-only" not in {p.slug for p in problem_types()}
    assert Fake.status == 418


# --- real responses against the document ---------------------------------------------


class Contract:
    """Validates responses against the operation's documented response for their status."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ok: set[tuple[str, str]] = set()
        self.ran: set[str] = set()
        jsonschema = pytest.importorskip("jsonschema")
        self._validator = jsonschema.Draft202012Validator
        self._paths: list[tuple[re.Pattern[str], str]] = [
            (re.compile("^" + re.sub(r"{[a-z_]+}", "[^/]+", p) + "$"), p) for p in spec["paths"]
        ]

    def template(self, url: str) -> str:
        path = url.split("?", maxsplit=1)[0]
        for pattern, template in self._paths:
            if pattern.match(path) and "{" not in template:
                return template
        for pattern, template in self._paths:
            if pattern.match(path):
                return template
        raise AssertionError(f"{path}: not a documented path")

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        root = {**schema, "components": self.spec["components"]}
        self._validator(root, format_checker=self._validator.FORMAT_CHECKER).validate(instance)

    def check(self, resp: TestResponse, method: str, url: str) -> Any:
        template = self.template(url)
        op = self.spec["paths"][template][method]
        status = str(resp.status_code)
        documented = op["responses"].get(status)
        assert documented is not None, f"{method.upper()} {template}: {status} undocumented"
        for name, declared in documented.get("headers", {}).items():
            header = declared
            if "$ref" in declared:
                header = self.spec["components"]["headers"][declared["$ref"].split("/")[-1]]
            if header.get("required"):
                assert name in resp.headers, (template, status, name)
        content = documented.get("content")
        if not content:
            return None
        media = resp.mimetype or ""
        assert media in content, (template, status, media, list(content))
        body: Any = resp.get_data(as_text=True)
        if media.endswith("json"):
            body = json.loads(body)
            self.validate(body, content[media]["schema"])
        if resp.status_code < 300:
            self.ok.add((method, template))
        return body


@pytest.fixture(scope="module")
def contract(spec: dict[str, Any]) -> Contract:
    return Contract(spec)


def _call(
    served: Served, contract: Contract, method: str, url: str, expect: int, **kwargs: Any
) -> Any:
    resp = served.client.open(url, method=method.upper(), **kwargs)
    assert resp.status_code == expect, (method, url, resp.get_data(as_text=True))
    return contract.check(resp, method, url)


def _problem(body: Any, slug: str) -> None:
    assert body["type"] == PROBLEM_BASE + slug, body


def _oauth_and_keys_scenario(served: Served, contract: Contract) -> None:
    ok = _call(
        served, contract, "post", "/oauth/token", 200,
        data={"grant_type": "client_credentials", "scope": "checks"},
        headers=served.basic("edu-bureau"),
    )  # fmt: skip
    assert ok["token_type"] == "Bearer" and ok["scope"] == "checks"
    bad = _call(
        served, contract, "post", "/oauth/token", 400,
        data={"grant_type": "client_credentials", "scope": "admin"},
        headers=served.basic("edu-bureau"),
    )  # fmt: skip
    assert bad["error"] == "invalid_scope"
    _call(served, contract, "post", "/oauth/token", 400, data={"grant_type": "password"})
    wrong = _call(
        served, contract, "post", "/oauth/token", 401,
        data={"grant_type": "client_credentials"}, headers=served.basic("edu-bureau", "nope"),
    )  # fmt: skip
    assert wrong["error"] == "invalid_client"
    _call(
        served, contract, "post", "/oauth/token", 400,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": "a.b.c",
        },
    )  # fmt: skip
    keys = _call(served, contract, "get", "/.well-known/jwks.json", 200)
    assert {k["crv"] for k in keys["keys"]} == {"SM2", "P-256"}
    meta = _call(served, contract, "get", "/.well-known/oauth-authorization-server", 200)
    assert meta["token_endpoint"] == meta["issuer"] + "/oauth/token"
    assert meta["jwks_uri"] == meta["issuer"] + "/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_signing_alg_values_supported"]) == {"SM2", "ES256"}


def _check_scenario(served: Served, contract: Contract) -> None:
    edu, insurer = served.auth("edu-bureau"), served.auth("insurer-a")
    body = {
        "subject": {"id_number": CHILD},
        "claim": "birth_registered",
        "purpose": "school_enrollment",
    }
    claims = _call(served, contract, "get", "/v1/claims", 200, headers=edu)
    assert {c["name"] for c in claims["claims"]} >= {"birth_registered"}
    _problem(_call(served, contract, "get", "/v1/claims", 401), "token-missing")
    _problem(
        _call(
            served, contract, "get", "/v1/claims", 401, headers={"Authorization": "Bearer x.y.z"}
        ),
        "token-invalid",
    )
    answer = _call(served, contract, "post", "/v1/checks", 200, json=body, headers=edu)
    assert answer["result"] == "undetermined"  # no department is connected
    district = {**body, "claim": "household_in_district", "params": {"district": "110105"}}
    _call(served, contract, "post", "/v1/checks", 200, json=district, headers=edu)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"subject": {"id_number": BAD_CHECK_DIGIT}}, 422, "invalid-id-number"),
        ({"claim": "no_such_claim"}, 400, "unknown-claim"),
        ({"purpose": "no_such_purpose"}, 400, "unknown-purpose"),
        ({"params": {"district": "999999"}}, 400, "unknown-parameter"),
        ({"extra": 1}, 400, "bad-request"),
        ({"answer_alg": "HS256"}, 400, "bad-request"),
    ]
    for change, status, slug in cases:
        _problem(
            _call(
                served, contract, "post", "/v1/checks", status, json={**body, **change}, headers=edu
            ),
            slug,
        )
    under = {**body, "purpose": "underwriting"}
    denied = _call(served, contract, "post", "/v1/checks", 403, json=under, headers=insurer)
    _problem(denied, "policy-denied")
    assert isinstance(denied["audit_index"], int)
    claim = {**body, "claim": "maternity_insurance_active", "purpose": "insurance_claim"}
    _problem(
        _call(served, contract, "post", "/v1/checks", 403, json=claim, headers=insurer),
        "consent-required",
    )
    officer = served.auth("privacy-officer")
    _problem(
        _call(served, contract, "post", "/v1/checks", 403, json=body, headers=officer),
        "insufficient-scope",
    )
    _problem(
        _call(
            served,
            contract,
            "post",
            "/v1/checks",
            400,
            data="{",
            headers={**edu, "Content-Type": "application/json"},
        ),
        "malformed-json",
    )
    big = json.dumps({**body, "consent_id": "x" * 70_000})
    _problem(
        _call(
            served,
            contract,
            "post",
            "/v1/checks",
            413,
            data=big,
            headers={**edu, "Content-Type": "application/json"},
        ),
        "payload-too-large",
    )


def _batch_scenario(served: Served, contract: Contract) -> None:
    batch = {
        "claim": "birth_registered",
        "purpose": "school_enrollment",
        "subjects": [{"id_number": CHILD}, {"id_number": "123"}],
    }
    out = _call(
        served,
        contract,
        "post",
        "/v1/checks/batch",
        200,
        json=batch,
        headers=served.auth("edu-bureau"),
    )
    assert [r["result"] for r in out["results"]] == ["undetermined", "invalid"]
    _problem(
        _call(
            served,
            contract,
            "post",
            "/v1/checks/batch",
            403,
            json=batch,
            headers=served.auth("insurer-a"),
        ),
        "insufficient-scope",
    )
    _problem(
        _call(
            served,
            contract,
            "post",
            "/v1/checks/batch",
            400,
            json={**batch, "subjects": []},
            headers=served.auth("edu-bureau"),
        ),
        "bad-request",
    )


def _consent_and_citizen_scenario(served: Served, contract: Contract) -> None:
    me, insurer = served.citizen(ADULT), served.auth("insurer-a")
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    grant = {
        "requester": "insurer-a",
        "purposes": ["insurance_claim"],
        "claims": ["maternity_insurance_active"],
        "expires_at": expires,
        "max_uses": 5,
    }
    consent = _call(served, contract, "post", "/v1/consents", 201, json=grant, headers=me)
    url = f"/v1/consents/{consent['id']}"
    _call(served, contract, "get", url, 200, headers=me)
    listed = _call(served, contract, "get", "/v1/me/consents", 200, headers=me)
    assert [c["id"] for c in listed["consents"]] == [consent["id"]]
    check = {
        "subject": {"id_number": ADULT},
        "claim": "maternity_insurance_active",
        "purpose": "insurance_claim",
        "consent_id": consent["id"],
    }
    _call(served, contract, "post", "/v1/checks", 200, json=check, headers=insurer)
    revoked = _call(served, contract, "delete", url, 200, headers=me)
    assert revoked["status"] == "REVOKED"
    _problem(_call(served, contract, "delete", url, 409, headers=me), "consent-not-active")
    _problem(
        _call(served, contract, "post", "/v1/checks", 403, json=check, headers=insurer),
        "consent-revoked",
    )
    _problem(
        _call(served, contract, "get", url, 404, headers=served.citizen(OTHER_ADULT)), "not-found"
    )
    _problem(_call(served, contract, "get", url, 401), "token-missing")
    refusals: list[tuple[dict[str, Any], int, str]] = [
        ({"requester": "nobody-here"}, 400, "unknown-requester"),
        ({"claims": ["married"]}, 400, "claim-not-for-purpose"),
        ({"subject": OTHER_ADULT}, 403, "subject-not-a-minor"),
        ({"colour": "red"}, 400, "bad-request"),
    ]
    for change, status, slug in refusals:
        _problem(
            _call(
                served,
                contract,
                "post",
                "/v1/consents",
                status,
                json={**grant, **change},
                headers=me,
            ),
            slug,
        )
    log = _call(served, contract, "get", "/v1/me/access-log?limit=10", 200, headers=me)
    assert any(
        e["kind"] == "check" and e.get("consent_id") == consent["id"] for e in log["entries"]
    )
    _problem(
        _call(served, contract, "get", "/v1/me/access-log?limit=0", 400, headers=me), "bad-request"
    )


def _audit_scenario(served: Served, contract: Contract) -> None:
    edu, officer = served.auth("edu-bureau"), served.auth("privacy-officer")
    body = {
        "subject": {"id_number": CHILD},
        "claim": "birth_registered",
        "purpose": "school_enrollment",
    }
    index = served.client.post("/v1/checks", json=body, headers=edu).get_json()["audit_index"]
    size = index + 1
    if served.gateway.checkpointer is not None:
        served.gateway.checkpointer.checkpoint(force=True)
        note = _call(served, contract, "get", "/v1/audit/checkpoint", 200)
        assert note.splitlines()[1].isdigit()
    _call(served, contract, "get", f"/v1/audit/proofs/consistency?first=1&second={size}", 200)
    _problem(
        _call(served, contract, "get", "/v1/audit/proofs/consistency?first=2&second=1", 400),
        "bad-request",
    )
    _call(
        served,
        contract,
        "get",
        f"/v1/audit/proofs/inclusion?index={index}&size={size}",
        200,
        headers=edu,
    )
    _call(
        served,
        contract,
        "get",
        f"/v1/audit/proofs/inclusion?index={index}&size={size}",
        200,
        headers=officer,
    )
    _problem(
        _call(served, contract, "get", f"/v1/audit/proofs/inclusion?index={index}&size={size}", 403,
              headers=served.auth("insurer-a")),
        "forbidden",
    )  # fmt: skip
    page = _call(
        served, contract, "get", "/v1/audit/entries?limit=5&kind=check", 200, headers=officer
    )
    assert page["entries"] and all(e["entry"]["kind"] == "check" for e in page["entries"])
    _call(served, contract, "post", "/v1/audit/entries/search", 200, headers=officer,
          json={"subject": CHILD, "limit": 5})  # fmt: skip
    _problem(
        _call(served, contract, "post", "/v1/audit/entries/search", 422, headers=officer,
              json={"subject": "123"}),
        "invalid-id-number",
    )  # fmt: skip
    _problem(
        _call(served, contract, "get", f"/v1/audit/entries?subject={CHILD}", 400, headers=officer),
        "subject-in-url",
    )
    _problem(
        _call(served, contract, "get", "/v1/audit/entries", 403, headers=edu), "insufficient-scope"
    )


def _admin_scenario(served: Served, contract: Contract) -> None:
    one, two = served.auth("admin-1"), served.auth("admin-2")
    policy = _call(served, contract, "get", "/v1/admin/policy", 200, headers=one)
    change = {"rules": [{"op": "add", "rule": ["g", "insurer-b", "insurer", "*"]}]}
    proposed = _call(
        served, contract, "post", "/v1/admin/policy/changes", 201, json=change, headers=one
    )
    approve = f"/v1/admin/policy/changes/{proposed['id']}/approve"
    _problem(_call(served, contract, "post", approve, 403, headers=one), "two-person-rule")
    approved = _call(served, contract, "post", approve, 200, headers=two)
    assert approved["policy_version"] != policy["version"]
    _problem(
        _call(served, contract, "post", approve, 409, headers=two), "policy-change-not-pending"
    )
    _problem(
        _call(served, contract, "post", "/v1/admin/policy/changes", 409, json=change, headers=one),
        "policy-change-conflict",
    )
    _problem(
        _call(
            served,
            contract,
            "post",
            "/v1/admin/policy/changes",
            400,
            json={"rules": "x"},
            headers=one,
        ),
        "invalid-policy",
    )
    undo = {"rules": [{"op": "remove", "rule": ["g", "insurer-b", "insurer", "*"]}]}
    second = _call(
        served, contract, "post", "/v1/admin/policy/changes", 201, json=undo, headers=two
    )
    _call(
        served,
        contract,
        "post",
        f"/v1/admin/policy/changes/{second['id']}/reject",
        200,
        headers=two,
    )
    missing = "/v1/admin/policy/changes/" + "0" * 32 + "/reject"
    _problem(_call(served, contract, "post", missing, 404, headers=one), "unknown-policy-change")
    _problem(
        _call(served, contract, "get", "/v1/admin/policy", 403, headers=served.auth("edu-bureau")),
        "insufficient-scope",
    )


def _clients_scenario(served: Served, contract: Contract) -> None:
    one, two = served.auth("admin-1"), served.auth("admin-2")
    jwk = SM2PrivateKey.generate().public_key.to_jwk(kid="k1")
    body = {"client_id": "school-9", "role": "education", "scopes": ["checks"],
            "jwks": {"keys": [jwk]}}  # fmt: skip
    first = _call(served, contract, "post", "/v1/admin/clients", 202, json=body, headers=one)
    changes = _call(served, contract, "get", "/v1/admin/changes", 200, headers=two)
    assert [c["kind"] for c in changes["changes"]] == ["client"]
    url = f"/v1/admin/changes/{first['change_id']}"
    assert _call(served, contract, "post", url + "/approve", 200, headers=two)["kind"] == "client"
    clients = _call(served, contract, "get", "/v1/admin/clients", 200, headers=one)["clients"]
    assert "school-9" in {c["client_id"] for c in clients}
    _call(served, contract, "post", "/v1/admin/clients/school-9/disable", 200, headers=one)
    again = _call(served, contract, "post", "/v1/admin/clients/school-9/enable", 202, headers=one)
    _call(served, contract, "post", f"/v1/admin/changes/{again['change_id']}/reject", 200,
          headers=one)  # fmt: skip
    rotation = _call(served, contract, "post", "/v1/admin/keys/gateway-tokens/rotate", 202,
                     headers=one)  # fmt: skip
    _call(served, contract, "post", f"/v1/admin/changes/{rotation['change_id']}/reject", 200,
          headers=one)  # fmt: skip
    bad_role = {**body, "client_id": "school-10", "role": "x"}
    _problem(
        _call(served, contract, "post", "/v1/admin/clients", 400, json=bad_role, headers=one),
        "invalid-policy",
    )


def _operations_and_docs_scenario(served: Served, contract: Contract) -> None:
    health = _call(served, contract, "get", "/healthz", 200)
    assert health["status"] in ("ok", "degraded")
    assert _call(served, contract, "get", "/livez", 200) == {"status": "ok"}
    ready = _call(served, contract, "get", "/readyz", 200)
    assert ready["status"] == "ready" and ready["reasons"] == []
    assert ready["stores"] == {"gateway": True, "audit": True}
    token = (served.settings.keys_dir / "metrics.token").read_text(encoding="utf-8").strip()
    _call(served, contract, "get", "/metrics", 200, headers={"Authorization": f"Bearer {token}"})
    _problem(_call(served, contract, "get", "/metrics", 401), "metrics-unauthenticated")
    _call(served, contract, "get", "/openapi.json", 200)
    _call(served, contract, "get", "/docs", 200)
    for asset in ("docs-init.js", "swagger-ui-bundle.js", "swagger-ui.css"):
        _call(served, contract, "get", f"/docs/{asset}", 200)
    _problem(_call(served, contract, "get", "/docs/evil.js", 404), "not-found")


def _statistics_scenario(served: Served, contract: Contract) -> None:
    from tongban.federation.paillier import generate_keypair, public_key_to_jwk

    analyst = served.auth("analyst")
    _call(served, contract, "get", "/v1/statistics", 200, headers=analyst)
    public, _ = generate_keypair(2048)
    body = {
        "statistic": "births_by_district_year",
        "params": {"year": "2025"},
        "public_key": public_key_to_jwk(public),
    }
    job = _call(served, contract, "post", "/v1/statistics", 202, json=body, headers=analyst)
    _call(served, contract, "get", f"/v1/statistics/{job['id']}", 200, headers=analyst)
    _problem(
        _call(served, contract, "get", "/v1/statistics/st-" + "0" * 24, 404, headers=analyst),
        "not-found",
    )
    _problem(
        _call(served, contract, "post", "/v1/statistics", 400,
              json={**body, "statistic": "credit_scores"}, headers=analyst),
        "unknown-statistic",
    )  # fmt: skip


def _federation_scenario(served: Served, contract: Contract) -> None:
    trainer = served.auth("analyst")
    body = {"kind": "horizontal", "rounds": 1, "secagg": False}
    job = _call(served, contract, "post", "/v1/federation/jobs", 202, json=body, headers=trainer)
    _call(served, contract, "get", f"/v1/federation/jobs/{job['id']}", 200, headers=trainer)
    _problem(
        _call(served, contract, "get", "/v1/federation/jobs/fl-" + "0" * 24, 404,
              headers=trainer),
        "not-found",
    )  # fmt: skip


SCENARIOS = {
    "statistics": _statistics_scenario,
    "federation": _federation_scenario,
    "oauth": _oauth_and_keys_scenario,
    "checks": _check_scenario,
    "batch": _batch_scenario,
    "consent": _consent_and_citizen_scenario,
    "audit": _audit_scenario,
    "admin": _admin_scenario,
    "clients": _clients_scenario,
    "operations": _operations_and_docs_scenario,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_responses_match_the_document(name: str, served: Served, contract: Contract):
    SCENARIOS[name](served, contract)
    contract.ran.add(name)


def test_every_operation_was_seen_succeeding(
    served: Served, contract: Contract, spec: dict[str, Any]
):
    """Each operation answered 2xx at least once, and that answer matched its documented
    schema (scenarios not run yet in this session are run here)."""
    for name, scenario in SCENARIOS.items():
        if name not in contract.ran:
            scenario(served, contract)
            contract.ran.add(name)
    documented = {(m, p) for m, p, _ in _operations(spec)}
    if served.gateway.checkpointer is None:
        documented.discard(("get", "/v1/audit/checkpoint"))
    assert documented - contract.ok == set()


def test_unknown_paths_and_methods_are_problems(served: Served, contract: Contract):
    for method, url, status, slug in [
        ("get", "/v2/nothing", 404, "not-found"),
        ("put", "/v1/checks", 405, "method-not-allowed"),
    ]:
        resp = served.client.open(url, method=method.upper())
        assert resp.status_code == status and resp.mimetype == "application/problem+json"
        contract.validate(resp.get_json(), {"$ref": "#/components/schemas/Problem"})
        _problem(resp.get_json(), slug)


# --- the docs page ---------------------------------------------------------------------

_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//)""", re.I)


def test_docs_page_is_self_contained(served: Served):
    resp = served.client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert not _EXTERNAL.search(html)
    assert "http://" not in html and "https://" not in html
    assert 'href="docs/swagger-ui.css"' in html and 'src="docs/swagger-ui-bundle.js"' in html
    assert 'src="docs/docs-init.js"' in html and "<script>" not in html
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for asset, mimetype in [
        ("docs-init.js", "text/javascript"),
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ]:
        got = served.client.get(f"/docs/{asset}")
        assert got.status_code == 200 and got.mimetype == mimetype
        assert got.headers["Cache-Control"] == "public, max-age=3600"
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        text = got.get_data(as_text=True)
        assert "@import" not in text
    # Our script names no other host; Swagger UI (vendored, tests/test_docs_browser.py
    # checks its bytes) is told never to ask validator.swagger.io.
    script = served.client.get("/docs/docs-init.js").get_data(as_text=True)
    assert "http://" not in script and "https://" not in script
    assert 'url: "openapi.json"' in script and "validatorUrl: null" in script
    assert "innerHTML" not in script
    for asset in ("docs.js", "docs.css"):
        assert served.client.get(f"/docs/{asset}").status_code == 404


def test_document_is_cached_and_conditional(served: Served):
    first = served.client.get("/openapi.json")
    assert first.headers["Cache-Control"] == "public, max-age=300"
    etag = first.headers["ETag"]
    again = served.client.get("/openapi.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    page = served.client.get("/docs")
    assert page.headers["Cache-Control"] == "no-cache"
    assert (
        served.client.get("/docs", headers={"If-None-Match": page.headers["ETag"]}).status_code
        == 304
    )


def test_docs_blueprint_calls_the_provider_once():
    calls: list[int] = []

    def provider() -> dict[str, Any]:
        calls.append(1)
        return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}}

    app = Flask("docs-test")
    app.register_blueprint(docs_blueprint(provider))
    client = app.test_client()
    assert client.get("/openapi.json").get_json()["openapi"] == "3.1.0"
    client.get("/openapi.json")
    assert calls == [1]


def test_the_http_api_page_lists_every_problem_type() -> None:
    """docs/http-api.md's problem table is the error tree's, row for row."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text("utf-8")
    table = page[page.index("| slug | status | title |") :].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    listed = [tuple(c.strip().strip("`") for c in r.strip("|").split("|")) for r in rows]
    assert listed == [(p.slug, str(p.status), p.title) for p in problem_types()]
