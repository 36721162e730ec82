"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of every body the gateway reads or
writes, and the problem responses an operation can return.

Enumerations come from the objects that enforce them: claim and purpose names and their
parameter values from the loaded :class:`~gateway.catalog.Catalog`, answer algorithms,
result words and batch limits from the pipeline, scopes from the client registry, problem
``type`` URIs from the error classes themselves. A change there changes the document.
Request schemas say ``additionalProperties: false`` because the gateway refuses unknown
fields (``bad-request``); a generator such as schemathesis may rely on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tongban.primitives.bodies import component_schema
from tongban.primitives.errors import PROBLEM_BASE, TongbanError

from .catalog import Catalog
from .checks import RESULT_WORD
from .models import (
    _RULE_LINE,
    AccessLog,
    AccessLogItem,
    AnswerClaims,
    AuditEntries,
    AuditEntry,
    AuditSearch,
    AuthorizationServerMetadata,
    BasisEditBody,
    BatchAnswerClaims,
    BatchAnswerItem,
    BatchItem,
    BatchRequest,
    BatchResponse,
    BatchSubject,
    ChangeApproved,
    ChangeProposed,
    ChangeRejected,
    CheckRequest,
    CheckResponse,
    ClaimDescription,
    ClaimPurpose,
    ClaimsResponse,
    Consent,
    ConsentArtefactClaims,
    ConsentGrant,
    ConsentList,
    ConsistencyProof,
    DepartmentHealth,
    DpRequest,
    FederationJob,
    FederationJobRequest,
    Health,
    HealthAudit,
    HealthCheckpoint,
    InclusionProof,
    Jwk,
    Jwks,
    Liveness,
    LoggedEntry,
    ParamLimit,
    PendingChange,
    Policy,
    PolicyChange,
    PurposeTitles,
    Readiness,
    RuleEditBody,
    StatisticJob,
    StatisticRequest,
    StatisticsListing,
    StatisticUnavailableItem,
    Subject,
    TokenResponse,
)

__all__ = [
    "CHANGE_ID_PATTERN",
    "CONSENT_ID_PATTERN",
    "ID_NUMBER_PATTERN",
    "JWS_PATTERN",
    "Json",
    "component_schemas",
    "problem_responses",
    "ref",
]

Json = dict[str, Any]

ID_NUMBER_PATTERN = "^[0-9]{17}[0-9Xx]$"
MASKED_ID_PATTERN = "^[0-9]{6}[*]{8}[0-9]{3}[0-9X]$"
JWS_PATTERN = "^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$"
CONSENT_ID_PATTERN = "^[A-Za-z0-9_-]{22}$"  # secrets.token_urlsafe(16)
CHANGE_ID_PATTERN = "^[0-9a-f]{32}$"  # uuid4().hex
CLIENT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"  # gateway.oauth.registry
HASH_PATTERN = "^[0-9a-f]{64}$"  # SM3, lowercase hex
MAX_CONSENT_ITEMS = 32  # gateway.consent: at most this many purposes or claims
ANSWER_ALGS = ("SM2", "ES256")
BATCH_RESULTS = ("yes", "no", "undetermined", "denied", "invalid")


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    properties: Json, required: Iterable[str] = (), *, closed: bool = True, **extra: Any
) -> Json:
    schema: Json = {"type": "object", "properties": properties}
    names = list(required)
    if names:
        schema["required"] = names
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def _str(description: str = "", **extra: Any) -> Json:
    schema: Json = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _array(items: Json, **extra: Any) -> Json:
    return {"type": "array", "items": items, **extra}


_INDEX = {"type": "integer", "minimum": 0, "description": "Audit log index (leaf number)."}
_TIME = _str("RFC 3339 date-time, UTC.", format="date-time")
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


# --- problems -------------------------------------------------------------------------


def problem_responses(*errors: type[TongbanError]) -> dict[str, Json]:
    """OpenAPI responses, one per status, each a Problem whose ``type`` is one of the
    given classes' URIs. Classes are taken as declared: a base class lists its own type
    only, so name each subclass an operation can raise."""
    by_status: dict[int, dict[str, str]] = {}
    for cls in errors:
        by_status.setdefault(cls.status, {})[PROBLEM_BASE + cls.slug] = cls.title
    out: dict[str, Json] = {}
    for status in sorted(by_status):
        types = by_status[status]
        headers: Json = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
        if status == 401:
            headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
        elif status == 429:
            headers["Retry-After"] = {
                "description": "Whole seconds until the request would be admitted (RFC 9110).",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
            }
        elif status == 403 and PROBLEM_BASE + "insufficient-scope" in types:
            headers["WWW-Authenticate"] = {
                "description": 'For `insufficient-scope`: `Bearer error="insufficient_scope"`, '
                "naming the scope (RFC 6750 section 3.1).",
                "schema": {"type": "string"},
            }
        listed = "; ".join(
            f"`{t.removeprefix(PROBLEM_BASE)}` ({title})" for t, title in types.items()
        )
        out[str(status)] = {
            "description": f"Problem: {listed}.",
            "headers": headers,
            "content": {
                "application/problem+json": {
                    "schema": {
                        "allOf": [
                            ref("Problem"),
                            {
                                "properties": {
                                    "type": {"enum": sorted(types)},
                                    "status": {"const": status},
                                }
                            },
                        ]
                    }
                }
            },
        }
    return out


def _problem() -> Json:
    return _obj(
        {
            "type": _str(
                "Stable URI naming the kind of problem; see `x-problem-types`.", format="uri"
            ),
            "title": _str("Short summary of the problem type; the same for every occurrence."),
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": _str(
                "Names the field at fault and what was expected; never repeats personal data."
            ),
            "instance": _str("The request id (also in the `X-Request-Id` header)."),
            "audit_index": {
                **_INDEX,
                "description": "For refused checks: the audit entry recording the refusal.",
            },
            "reason": _str(
                "For `invalid-id-number`: which GB 11643 rule failed.",
                enum=["bad_length", "bad_format", "bad_region", "bad_date", "bad_check_digit"],
            ),
            "required_scope": _str("For `insufficient-scope`: the scope the operation needs."),
            "retry_after": {
                "type": "integer",
                "minimum": 1,
                "description": "For `rate-limited`: seconds to wait, as in `Retry-After`.",
            },
            "limit": _str("For `rate-limited`: which limit.", enum=["requester", "subject"]),
            "parameter": _str("For `unknown-parameter`: the enumerated parameter at fault."),
            "allowed": _array(
                _str(),
                description="For `unknown-parameter` and `unknown-purpose`: every value the "
                "parameter or purpose may take (the caller's own value is never repeated).",
            ),
            "claims": _str(
                "For `unknown-claim` and `unknown-purpose`: where the claims and purposes are "
                "listed (`/v1/claims`).",
                format="uri-reference",
            ),
            "statistics": _str(
                "For `unknown-statistic`: where the statistics are listed (`/v1/statistics`).",
                format="uri-reference",
            ),
        },
        ["type", "title", "status", "detail", "instance"],
        closed=False,
        description="RFC 9457 problem details. Extension members may be added.",
    )


def _oauth_error() -> Json:
    return _obj(
        {
            "error": _str(
                "RFC 6749 section 5.2 error code.",
                enum=[
                    "invalid_request",
                    "invalid_client",
                    "invalid_grant",
                    "unauthorized_client",
                    "unsupported_grant_type",
                    "invalid_scope",
                    "temporarily_unavailable",
                ],
            ),
            "error_description": _str("ASCII, without quotes or backslashes."),
            "error_uri": _str(format="uri"),
            "type": _str(
                "When a client assertion was refused: the tongban problem type of the "
                "reason; `rate-limited` for a throttled request (429).",
                enum=sorted(
                    PROBLEM_BASE + s
                    for s in (
                        "token-invalid",
                        "token-expired",
                        "token-not-yet-valid",
                        "token-wrong-type",
                        "token-wrong-audience",
                        "token-replayed",
                        "rate-limited",
                    )
                ),
            ),
            "limit": _str("For a 429: the bucket that ran dry.", enum=["client", "source"]),
            "retry_after": {"type": "integer", "minimum": 1, "description": "As `Retry-After`."},
        },
        ["error"],
        closed=False,
        description="Token endpoint error (RFC 6749 section 5.2), not problem+json.",
    )


# --- catalog-derived ------------------------------------------------------------------


def _params_rules(catalog: Catalog) -> list[Json]:
    """Per claim: exactly its parameters, each from its enumeration."""
    rules: list[Json] = []
    for name in sorted(catalog.claims):
        claim = catalog.claims[name]
        params = _obj(
            {p: {"type": "string", "enum": list(v)} for p, v in sorted(claim.params.items())},
            sorted(claim.params),
        )
        then: Json = {"properties": {"params": params}}
        if claim.params:
            then["required"] = ["params"]
        rules.append({"if": {"properties": {"claim": {"const": name}}}, "then": then})
    return rules


def _catalog_schemas(catalog: Catalog) -> Json:
    claims = sorted(catalog.claims)
    purposes = sorted(catalog.purposes)
    departments = sorted({d for c in catalog.claims.values() for d in c.departments})
    param_values = {
        p: sorted({v for c in catalog.claims.values() for v in c.params.get(p, ())})
        for p in sorted({p for c in catalog.claims.values() for p in c.params})
    }
    return {
        "ClaimName": _str("A claim of the catalog.", enum=claims),
        "PurposeName": _str("A purpose of the catalog.", enum=purposes),
        "DepartmentName": _str(enum=departments),
        "ClaimParams": _obj(
            {p: _str(enum=v) for p, v in param_values.items()},
            description="Parameters, each from its enumeration; which ones a claim takes is "
            "in `GET /v1/claims` (and enforced per claim on the request schemas).",
        ),
        **{
            m.__name__: component_schema(m)
            for m in (ClaimDescription, ClaimPurpose, ClaimsResponse, ParamLimit, PurposeTitles)
        },
        **{
            name: {**component_schema(model), "allOf": _params_rules(catalog)}
            for name, model in (("CheckRequest", CheckRequest), ("BatchRequest", BatchRequest))
        },
        "ConsentGrant": component_schema(ConsentGrant),
        "Consent": component_schema(Consent),
    }


# --- the rest -------------------------------------------------------------------------


def _answers() -> Json:
    return {
        m.__name__: component_schema(m)
        for m in (AnswerClaims, BatchAnswerClaims, BatchAnswerItem, ConsentArtefactClaims)
    }


def _checks() -> Json:
    return {
        "IdNumber": _str(
            "GB 11643-1999 citizen ID number (check digit validated: 422 if wrong).",
            pattern=ID_NUMBER_PATTERN,
        ),
        "AnswerAlg": _str(
            "Signature algorithm of the answer; default SM2.", enum=list(ANSWER_ALGS)
        ),
        "Result": _str(
            "`undetermined`: a department did not answer (never reported as `no`).",
            enum=sorted(set(RESULT_WORD.values())),
        ),
        "BatchResult": _str(
            "`denied`: consent refused for this subject; `invalid`: bad ID number.",
            enum=list(BATCH_RESULTS),
        ),
        "CompactJws": _str("Compact JWS (RFC 7515).", pattern=JWS_PATTERN),
        **{
            model.__name__: component_schema(model)
            for model in (Subject, BatchSubject, CheckResponse, BatchItem, BatchResponse)
        },
    }


def _oauth(scopes: Iterable[str]) -> Json:
    return {
        "TokenRequest": _obj(
            {
                "grant_type": _str(enum=["client_credentials"]),
                "scope": _str(
                    "Space-separated; default: every scope the client holds.",
                    pattern="^("
                    + "|".join(sorted(s.replace(":", "[:]") for s in scopes))
                    + ")( ("
                    + "|".join(sorted(s.replace(":", "[:]") for s in scopes))
                    + "))*$",
                ),
                "client_assertion_type": _str(
                    enum=["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
                ),
                "client_assertion": {
                    **ref("CompactJws"),
                    "description": "private_key_jwt (RFC 7523): iss = sub = client id, aud = "
                    "the token endpoint URL, short exp, single-use jti; alg as registered.",
                },
                "client_id": _str(pattern=CLIENT_ID_PATTERN),
            },
            ["grant_type"],
            description="Authenticate with HTTP Basic (client_secret_basic) OR a client "
            "assertion (private_key_jwt), never both.",
        ),
        "TokenResponse": component_schema(TokenResponse),
        "OAuthError": _oauth_error(),
        "Jwk": component_schema(Jwk),
        "Jwks": component_schema(Jwks),
        "AuthorizationServerMetadata": component_schema(AuthorizationServerMetadata),
    }


def _citizen() -> Json:
    return {
        "ConsentList": component_schema(ConsentList),
        "AccessLogItem": component_schema(AccessLogItem),
        "AccessLog": component_schema(AccessLog),
    }


def _audit() -> Json:
    return {
        "LoggedEntry": component_schema(LoggedEntry),
        "ConsistencyProof": component_schema(ConsistencyProof),
        "InclusionProof": component_schema(InclusionProof),
        "AuditEntry": component_schema(AuditEntry),
        "AuditSearch": component_schema(AuditSearch),
        "AuditEntries": component_schema(AuditEntries),
    }


def _admin() -> Json:
    rule = {"type": "array", "items": {"type": "string", "maxLength": 128}, "minItems": 2,
            **_RULE_LINE}  # fmt: skip
    return {
        "PolicyRule": rule,
        "PolicyChange": component_schema(PolicyChange),
        "RuleEditBody": component_schema(RuleEditBody),
        "BasisEditBody": component_schema(BasisEditBody),
        **{
            m.__name__: component_schema(m)
            for m in (PendingChange, Policy, ChangeProposed, ChangeApproved, ChangeRejected)
        },
    }


def _operations() -> Json:
    return {
        m.__name__: component_schema(m)
        for m in (Health, HealthAudit, HealthCheckpoint, DepartmentHealth, Liveness, Readiness)
    }


def _federation() -> Json:
    return {m.__name__: component_schema(m) for m in (FederationJobRequest, FederationJob)}


def _statistics() -> Json:
    models = (StatisticRequest, DpRequest, StatisticJob, StatisticsListing)
    return {m.__name__: component_schema(m) for m in (*models, StatisticUnavailableItem)}


def component_schemas(catalog: Catalog, scopes: Iterable[str]) -> Json:
    scopes = sorted(scopes)
    schemas: Json = {
        "Problem": _problem(),
        **_checks(),
        **_statistics(),
        **_federation(),
        **_catalog_schemas(catalog),
        **_answers(),
        **_oauth(scopes),
        **_citizen(),
        **_audit(),
        **_admin(),
        **_operations(),
    }
    return dict(sorted(schemas.items()))
