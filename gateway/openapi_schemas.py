"""The OpenAPI components (JSON Schema 2020-12, as OpenAPI 3.1 uses it).

The bodies' components are generated from the models the operations declare
(:mod:`gateway.models`, through :func:`~tongban.primitives.bodies.component_schemas`),
with every model they contain. Declared here is only what a model cannot know: the
enumerations that come from the loaded claim catalog (claim, purpose, department and
parameter names, and which parameters each claim takes) and the named strings the models
refer to (:func:`~tongban.primitives.bodies.schema_ref`). A change to the catalog, a
result word or a model changes the document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from tongban.primitives.bodies import component_schemas as model_schemas

from .catalog import Catalog
from .checks import RESULT_WORD
from .models import _RULE_LINE, ANSWER_ALGS, BATCH_RESULTS

__all__ = ["ID_NUMBER_PATTERN", "JWS_PATTERN", "Json", "component_schemas"]

Json = dict[str, Any]

ID_NUMBER_PATTERN = "^[0-9]{17}[0-9Xx]$"
JWS_PATTERN = "^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$"


def _enum(values: Iterable[str], description: str = "") -> Json:
    schema: Json = {"type": "string", "enum": list(values)}
    return {**schema, "description": description} if description else schema


def _params_rules(catalog: Catalog) -> list[Json]:
    """Per claim: exactly its parameters, each from its enumeration."""
    rules: list[Json] = []
    for name in sorted(catalog.claims):
        claim = catalog.claims[name]
        props = {p: _enum(v) for p, v in sorted(claim.params.items())}
        params = {"type": "object", "properties": props, "additionalProperties": False}
        if claim.params:
            params["required"] = sorted(claim.params)
        then: Json = {"properties": {"params": params}}
        if claim.params:
            then["required"] = ["params"]
        rules.append({"if": {"properties": {"claim": {"const": name}}}, "then": then})
    return rules


def _named(catalog: Catalog) -> Json:
    claims = catalog.claims.values()
    names = sorted({p for c in claims for p in c.params})
    values = {p: _enum(sorted({v for c in claims for v in c.params.get(p, ())})) for p in names}
    return {
        "ClaimName": _enum(sorted(catalog.claims), "A claim of the catalog."),
        "PurposeName": _enum(sorted(catalog.purposes), "A purpose of the catalog."),
        "DepartmentName": _enum(sorted({d for c in claims for d in c.departments})),
        "ClaimParams": {
            "type": "object",
            "properties": values,
            "additionalProperties": False,
            "description": "Parameters, each from its enumeration; which ones a claim takes is "
            "in `GET /v1/claims` (and enforced per claim on the request schemas).",
        },
        "IdNumber": {
            "type": "string",
            "pattern": ID_NUMBER_PATTERN,
            "description": "GB 11643-1999 citizen ID number (check digit validated: 422 if "
            "wrong).",
        },
        "AnswerAlg": _enum(ANSWER_ALGS, "Signature algorithm of the answer; default SM2."),
        "Result": _enum(
            sorted(set(RESULT_WORD.values())),
            "`undetermined`: a department did not answer (never reported as `no`).",
        ),
        "BatchResult": _enum(
            BATCH_RESULTS, "`denied`: consent refused for this subject; `invalid`: bad ID number."
        ),
        "CompactJws": {"type": "string", "pattern": JWS_PATTERN,
                       "description": "Compact JWS (RFC 7515)."},
        "PolicyRule": {"type": "array", "items": {"type": "string", "maxLength": 128},
                       "minItems": 2, **_RULE_LINE},
    }  # fmt: skip


def component_schemas(catalog: Catalog, models: Iterable[type[BaseModel]]) -> Json:
    """Every component: those of ``models`` (and what they contain), and the declared."""
    schemas: Json = {**model_schemas(models), **_named(catalog)}
    for name in ("CheckRequest", "BatchRequest"):
        schemas[name] = {**schemas[name], "allOf": _params_rules(catalog)}
    return dict(sorted(schemas.items()))
