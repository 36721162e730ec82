"""Typed bodies (tongban.primitives.bodies, gateway/models.py): every malformed body is a
400 ``bad-request`` naming the field by its location and never repeating the input, and
the OpenAPI components of the check bodies are the models' own schemas."""

from __future__ import annotations

from typing import Any

import pytest

from tongban.gateway.catalog import Catalog
from tongban.gateway.models import BatchRequest, BatchResponse, CheckRequest
from tongban.gateway.openapi_schemas import component_schemas
from tongban.primitives.bodies import component_schema, parse_body
from tongban.primitives.errors import BadRequest

ID = "150102199305160016"
CHECK = {"subject": {"id_number": ID}, "claim": "birth_registered", "purpose": "school_enrollment"}


def _refusal(model: Any, body: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_body(model, body)
    detail = str(caught.value)
    assert ID not in detail and "secret-value" not in detail
    return detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([CHECK], "body: expected a JSON object"),
        ("x", "body: expected a JSON object"),
        ({**CHECK, "subject": ID}, "subject: expected a JSON object"),
        (
            {**CHECK, "subject": {"id_number": 150102199305160016}},
            "subject.id_number: expected a string",
        ),
        ({k: v for k, v in CHECK.items() if k != "claim"}, "claim: required"),
        ({**CHECK, "claim": 7}, "claim: expected a string"),
        ({**CHECK, "answer_alg": "RS256"}, "answer_alg: Input should be 'SM2' or 'ES256'"),
        ({**CHECK, "consent_id": ""}, "consent_id: expected at least 1 characters"),
        ({**CHECK, "consent_id": "x" * 129}, "consent_id: expected at most 128 characters"),
        ({**CHECK, "consent_id": 5}, "consent_id: expected a string"),
        ({**CHECK, "extra_field": 1}, "extra_field: unexpected field"),
        # A key the client chose is named only if it looks like a field name: it can be an
        # ID number, or anything else that must not come back.
        ({**CHECK, ID: 1}, "…: unexpected field"),
        (
            {**CHECK, "subject": {"id_number": ID, ID: "secret-value"}},
            "subject[…]: unexpected field",
        ),
    ],
)
def test_a_malformed_check_names_the_field_and_never_the_input(body: Any, detail: str) -> None:
    assert _refusal(CheckRequest, body) == detail


def test_no_coercion_and_nested_locations_in_a_batch() -> None:
    batch = {"claim": "c", "purpose": "p", "subjects": [{"id_number": ID}] * 3}
    assert parse_body(BatchRequest, batch).subjects[2].id_number == ID
    bad = {**batch, "subjects": [{"id_number": ID}, {"id_number": ID, "consent_id": 1}]}
    assert _refusal(BatchRequest, bad) == "subjects[1].consent_id: expected a string"
    assert _refusal(BatchRequest, {**batch, "subjects": []}) == (
        "subjects: expected at least 1 items"
    )
    many = {**batch, "subjects": [{"id_number": ID}] * 10_001}
    assert _refusal(BatchRequest, many) == "subjects: expected at most 10000 items"
    assert _refusal(BatchRequest, {**batch, "answer_alg": None}).startswith("answer_alg: ")


def test_the_check_components_are_generated_from_the_models(claim_catalog: Catalog) -> None:
    schemas = component_schemas(claim_catalog, [CheckRequest, BatchRequest, BatchResponse])
    check = dict(schemas["CheckRequest"])
    assert check.pop("allOf")  # the per-claim parameter rules come from the catalog
    assert check == component_schema(CheckRequest)
    assert check["additionalProperties"] is False
    assert check["properties"]["claim"] == {"$ref": "#/components/schemas/ClaimName"}
    assert set(check["required"]) == {"subject", "claim", "purpose"}
    assert schemas["BatchResponse"] == component_schema(BatchResponse)
    assert schemas["BatchResponse"]["properties"]["answer"]["description"]
    # Every $ref of a generated component names a component of the document.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schemas)
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)


def test_a_union_member_is_not_named_as_a_field() -> None:
    from tongban.gateway.models import ConsentGrant

    body = {"requester": "a", "purposes": ["x"], "claims": ["y"], "expires_at": "2026-09-01"}
    assert _refusal(ConsentGrant, {**body, "subject": 150622}) == "subject: expected a string"
    assert _refusal(ConsentGrant, {**body, "not_before": 5}) == "not_before: expected a string"
    assert _refusal(ConsentGrant, {**body, "none": 5}) == "none: unexpected field"


def _payload(token: str) -> dict[str, Any]:
    import base64
    import json

    body = token.split(".")[1]
    loaded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return loaded


def test_what_the_gateway_signs_is_what_its_models_document(tmp_path: Any) -> None:
    """The signed payloads' schemas are generated from models; real answers (one check, a
    batch with an invalid subject, a consent artefact) validate against them."""
    from tongban.gateway.models import AnswerClaims, BatchAnswerClaims, ConsentArtefactClaims

    from .hostile_harness import ADULT, build_hostile

    h = build_hostile(tmp_path)
    try:
        check = {"subject": {"id_number": ADULT}, "claim": "birth_registered",
                 "purpose": "school_enrollment"}  # fmt: skip
        one = h.client.post("/v1/checks", json=check, headers=h.auth("edu-bureau")).get_json()
        AnswerClaims.model_validate(_payload(one["answer"]))
        batch = {"claim": "birth_registered", "purpose": "school_enrollment",
                 "subjects": [{"id_number": ADULT}, {"id_number": "not-an-id"}]}  # fmt: skip
        many = h.client.post("/v1/checks/batch", json=batch, headers=h.auth("edu-bureau"))
        signed = BatchAnswerClaims.model_validate(_payload(many.get_json()["answer"]))
        assert [r.sub is None for r in signed.results] == [False, True]
        import datetime as dt

        ends = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat(timespec="seconds")
        grant = {
            "requester": "insurer-a",
            "purposes": ["insurance_claim"],
            "claims": ["maternity_insurance_active"],
            "expires_at": ends,
        }
        resp = h.client.post("/v1/consents", json=grant, headers=h.citizen())
        assert resp.status_code == 201, resp.get_data(as_text=True)
        ConsentArtefactClaims.model_validate(_payload(resp.get_json()["artefact"]))
    finally:
        h.close()


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"limit": "abc"}, "limit: expected an integer"),
        ({"limit": "0"}, "limit: expected at least 1"),
        ({"cursor": "-3"}, "cursor: expected at least 0"),
        ({"order": "up"}, "order: Input should be 'asc' or 'desc'"),
    ],
)
def test_query_parameters_are_parsed_leniently_but_checked(
    query: dict[str, str], detail: str
) -> None:
    from tongban.gateway.models import AuditFilters

    assert parse_body(AuditFilters, {"limit": "5", "cursor": "7"}, strict=False).limit == 5
    with pytest.raises(BadRequest) as caught:
        parse_body(AuditFilters, query, root="query", strict=False)
    assert str(caught.value) == detail
