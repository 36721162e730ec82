"""Oversized and deeply nested bodies, on every operation that reads a body: 413
``payload-too-large`` past the limit (also when the body is streamed without a
Content-Length), 400 ``bad-request`` past the nesting limit (the stdlib parser would
otherwise recurse into a RecursionError, a 500), and nothing written either way."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from tongban.gateway.app import MAX_BODY
from tongban.gateway.views_checks import BATCH_MAX_BODY
from tongban.http_shell import MAX_JSON_DEPTH, json_depth
from tongban.primitives.errors import PROBLEM_BASE

from .hostile_harness import Hostile, build_hostile

JSON_OPERATIONS = {
    "/v1/checks": ("insurer-a", MAX_BODY),
    "/v1/checks/batch": ("edu-bureau", BATCH_MAX_BODY),
    "/v1/consents": ("citizen", MAX_BODY),
    "/v1/admin/policy/changes": ("admin-1", MAX_BODY),
    "/v1/statistics": ("analyst", MAX_BODY),
    "/oauth/token": ("basic", MAX_BODY),
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    h = build_hostile(tmp_path_factory.mktemp("attacks-size"))
    yield h
    h.close()


def _auth(gw: Hostile, who: str) -> dict[str, str]:
    if who == "citizen":
        return gw.citizen()
    if who == "basic":
        return gw.basic("edu-bureau")
    return gw.auth(who)


def test_every_body_reading_operation_is_covered(gw: Hostile):
    spec = gw.client.get("/openapi.json").get_json()
    with_body = {p for p, item in spec["paths"].items() for op in item.values()
                 if isinstance(op, dict) and "requestBody" in op}  # fmt: skip
    assert set(JSON_OPERATIONS) <= with_body  # routes added later get the app-wide limits


def _problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    body = resp.get_json()
    assert resp.status_code == status, body
    assert resp.mimetype == "application/problem+json"
    assert body["type"] == PROBLEM_BASE + slug
    return dict(body)


@pytest.mark.parametrize("path", list(JSON_OPERATIONS))
def test_oversized_bodies_are_413(gw: Hostile, path: str):
    who, limit = JSON_OPERATIONS[path]
    audit, consents = gw.audit_size(), gw.consent_rows()
    big = b'{"x": "' + b"A" * limit + b'"}'
    headers = {**_auth(gw, who), "Content-Type": "application/json"}

    _problem(gw.client.post(path, data=big, headers=headers), 413, "payload-too-large")

    # Streamed with no Content-Length: the limit applies to what is read, not what is said.
    streamed = gw.client.post(
        path, input_stream=io.BytesIO(big), headers={**headers, "Transfer-Encoding": "chunked"}
    )
    assert streamed.status_code in (400, 413), streamed.get_json()
    if path == "/oauth/token":  # RFC 6749 section 5.2 errors there, not problem+json
        assert streamed.get_json()["error"]  # the truncated form is refused, never parsed
    else:
        assert streamed.mimetype == "application/problem+json"
    # A lying Content-Length larger than the limit is refused before reading anything.
    lying = gw.client.post(path, data=b"{}", headers={**headers, "Content-Length": str(limit + 1)})
    assert lying.status_code in (400, 413)
    assert (gw.audit_size(), gw.consent_rows()) == (audit, consents)


@pytest.mark.parametrize("path", [p for p in JSON_OPERATIONS if p != "/oauth/token"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 2_000, 10_000])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_deeply_nested_json_is_400_not_500(gw: Hostile, path: str, depth: int, shape: str):
    who, _ = JSON_OPERATIONS[path]
    opener, closer = ("[", "]") if shape == "array" else ('{"a":', "}")
    body = opener * depth + "1" + closer * depth
    audit, consents = gw.audit_size(), gw.consent_rows()

    resp = gw.client.post(
        path, data=body, headers={**_auth(gw, who), "Content-Type": "application/json"}
    )

    problem = _problem(resp, 400, "bad-request")
    assert "nested" in problem["detail"]
    assert (gw.audit_size(), gw.consent_rows()) == (audit, consents)


def test_nesting_at_the_limit_is_parsed_and_judged_on_its_shape(gw: Hostile):
    body = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    resp = gw.client.post(
        "/v1/checks", data=body,
        headers={**gw.auth("insurer-a"), "Content-Type": "application/json"},
    )  # fmt: skip
    problem = _problem(resp, 400, "bad-request")
    assert "nested" not in problem["detail"]


def test_wide_bodies_are_refused_by_shape_not_crashed(gw: Hostile):
    wide = "{" + ",".join(f'"k{i}": {i}' for i in range(3000)) + "}"
    resp = gw.client.post(
        "/v1/checks", data=wide,
        headers={**gw.auth("insurer-a"), "Content-Type": "application/json"},
    )  # fmt: skip
    _problem(resp, 400, "bad-request")


@pytest.mark.parametrize(
    ("text", "depth"),
    [("{}", 1), ("[[],[[]]]", 3), ('{"a": "[[[[[[["}', 1), ('["\\"[[["]', 1), ("1", 0),
     ('{"a": [{"b": "}}}"}]}', 3)],
)  # fmt: skip
def test_json_depth_skips_strings(text: str, depth: int):
    assert json_depth(text) == depth
