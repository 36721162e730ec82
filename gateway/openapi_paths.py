"""The operations of the gateway's HTTP contract, as OpenAPI 3.1 path items.

Each operation lists the problem types it can return by naming the error classes, so a
renamed slug follows automatically; ``tests/test_openapi.py`` checks that the paths here
and the routes a real app registers are the same set.
"""

from __future__ import annotations

from typing import Any

from tongban.audit.log import AuditBehindWitnesses, AuditIntegrityError
from tongban.federation.dp import InvalidEpsilon
from tongban.federation.paillier import InvalidPublicKey
from tongban.federation.statistics import UnknownStatistic
from tongban.policies.errors import (
    AuditFailed,
    ChangeConflict,
    ChangeNotPending,
    InvalidPolicy,
    TwoPersonRule,
    UnknownChange,
)
from tongban.primitives.errors import (
    BadRequest,
    Forbidden,
    InvalidIdNumber,
    MalformedJson,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StoreUnavailable,
    TongbanError,
    UnknownParameter,
)
from tongban.primitives.metrics_auth import MetricsUnauthenticated

from .catalog import UnknownClaim, UnknownPurpose
from .checks import MAX_BATCH_SUBJECTS, PolicyDenied
from .consent import (
    ClaimNotForPurpose,
    ConsentExhausted,
    ConsentExpired,
    ConsentMismatch,
    ConsentNotActive,
    ConsentNotFound,
    ConsentNotYetValid,
    ConsentRefused,
    ConsentRequired,
    ConsentRevoked,
    GuardianConsentRequired,
    GuardianUndetermined,
    NotAGuardian,
    SubjectNotAMinor,
    UnknownRequester,
)
from .enumeration import ParameterEnumeration
from .jobs import JobDenied
from .oauth.errors import (
    InsecureTransport,
    InsufficientScope,
    InvalidToken,
    TokenExpired,
    TokenMissing,
    TokenNotYetValid,
    TokenRevoked,
    TokenWrongAudience,
    TokenWrongIssuer,
    TokenWrongType,
)
from .openapi_schemas import CHANGE_ID_PATTERN, CONSENT_ID_PATTERN, Json, problem_responses, ref
from .statistics import DpRequired, StatisticUnavailable
from .statistics_store import BudgetExhausted
from .views_audit import SubjectInUrl

__all__ = ["DOCS_ASSETS", "METRICS_MEDIA_TYPES", "paths"]

METRICS_MEDIA_TYPES = ("text/plain", "application/openmetrics-text")
# The /docs page's files under gateway/static: our script that starts Swagger UI, and
# Swagger UI itself (swagger-ui-dist from npm, vendored: gateway/static/README.md).
DOCS_ASSETS = {
    "docs-init.js": "text/javascript",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
}

Errors = tuple[type[TongbanError], ...]

_BEARER: Errors = (
    TokenMissing,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongType,
    TokenWrongIssuer,
    TokenWrongAudience,
    TokenRevoked,
)
_CITIZEN: Errors = tuple(e for e in _BEARER if e is not TokenRevoked)
_CONSENT_REFUSED: Errors = (
    ConsentRefused,
    ConsentRequired,
    ConsentNotFound,
    ConsentMismatch,
    ConsentRevoked,
    ConsentExpired,
    ConsentNotYetValid,
    ConsentExhausted,
)
_CATALOG: Errors = (UnknownClaim, UnknownPurpose, UnknownParameter)
_AUDIT_WRITE: Errors = (StoreUnavailable, AuditIntegrityError)
_ADMIN: Errors = (*_BEARER, InsufficientScope, StoreUnavailable, AuditFailed)


def _json(schema: Json, description: str, **headers: Json) -> Json:
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}, **headers},
        "content": {"application/json": {"schema": schema}},
    }


def _body(schema: Json, description: str = "") -> Json:
    out: Json = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        out["description"] = description
    return out


#: Operations a gateway behind its witnesses still answers (gateway/app.py).
_OPEN_WHEN_DIVERGED = frozenset(
    {"health", "livez", "readyz", "metrics", "jwks", "authorizationServerMetadata"}
)


def _op(
    op_id: str,
    tag: str,
    summary: str,
    ok: dict[str, Json],
    errors: Errors,
    *,
    security: list[dict[str, list[str]]] | None = None,
    description: str = "",
    **extra: Any,
) -> Json:
    """An operation. Every one can fail with ``internal`` (500), and every one with a JSON
    request body with ``malformed-json`` (400)."""
    body = extra.get("requestBody", {}).get("content", {})
    if "application/json" in body and MalformedJson not in errors:
        errors = (*errors, MalformedJson)
    # A gateway whose audit log is behind its witnesses answers every operation but its
    # health, metrics and keys with 503 audit-behind-witnesses (gateway/app.py).
    if op_id not in _OPEN_WHEN_DIVERGED and AuditBehindWitnesses not in errors:
        errors = (*errors, AuditBehindWitnesses)
    responses: Json = {**ok, **problem_responses(*errors, TongbanError)}
    operation: Json = {"operationId": op_id, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    operation.update(extra)
    operation["security"] = security if security is not None else []
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _oauth(*scopes: str) -> list[dict[str, list[str]]]:
    return [{"oauth2": list(scopes)}]


_CITIZEN_SECURITY: list[dict[str, list[str]]] = [{"citizenToken": []}]


def _query(name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _path_param(name: str, pattern: str, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": pattern},
        "description": description,
    }


_COUNT = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}


def _oauth_paths() -> Json:
    token_error = {"application/json": {"schema": ref("OAuthError")}}
    # A 400 is either an RFC 6749 error or, before Authlib reads the request at all, the
    # insecure-transport problem: one response, two media types.
    insecure = problem_responses(InsecureTransport)["400"]
    token = _op(
        "token",
        "oauth",
        "Issue an access token (client credentials)",
        {
            "200": _json(ref("TokenResponse"), "An RFC 9068 JWT access token."),
            "400": {
                "description": "RFC 6749 error, e.g. `invalid_scope` (a scope this "
                "client may not request), `unsupported_grant_type`, or "
                "`invalid_client` for a refused client assertion (with `type`); or the "
                "problem `insecure-transport` (`application/problem+json`).",
                "headers": insecure["headers"],
                "content": {**token_error, **insecure["content"]},
            },
            "401": {
                "description": "`invalid_client`: HTTP Basic credentials refused.",
                "headers": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
                "content": token_error,
            },
            "429": {
                "description": "`temporarily_unavailable` with `type` `rate-limited`: too "
                "many token requests for this client id or from this address (`limit`), "
                "refused before any secret or assertion is checked (docs/security.md).",
                "headers": {
                    "Retry-After": {
                        "description": "Whole seconds until a request would be admitted.",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
                    }
                },
                "content": token_error,
            },
        },
        (PayloadTooLarge, StoreUnavailable),
        security=[{"clientSecretBasic": []}, {}],
        description="OAuth 2.0 client credentials grant (RFC 6749 section 4.4). The "
        "client authenticates with `client_secret_basic` (HTTP Basic) or "
        "`private_key_jwt` (RFC 7523: `client_assertion_type` and `client_assertion` "
        "in the form; the empty security requirement stands for it), never both. "
        "Errors follow RFC 6749 section 5.2 (`application/json`), not problem+json, "
        "except `insecure-transport`: a request that by its own scheme and `Host` "
        "came over plain HTTP to a host that is not loopback.",
        requestBody={
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": ref("TokenRequest")}},
        },
    )
    return {
        "/oauth/token": {"post": token},
        "/.well-known/oauth-authorization-server": {
            "get": _op(
                "authorizationServerMetadata",
                "oauth",
                "OAuth 2.0 authorization server metadata (RFC 8414)",
                {"200": _json(ref("AuthorizationServerMetadata"), "Cacheable for an hour.")},
                (NotFound,),
                description="The token endpoint, the JWK Set, the grant, the client "
                "authentication methods and algorithms, and the scopes, for client libraries "
                "that discover them.",
            )
        },
        "/.well-known/jwks.json": {
            "get": _op(
                "jwks",
                "oauth",
                "Public keys of answers, checkpoints, consents and access tokens",
                {
                    "200": _json(
                        ref("Jwks"),
                        "JWK Set; SM2 keys as `{kty: EC, crv: SM2}`. Cacheable for 5 minutes.",
                    )
                },
                (),
                description="Everything the gateway signs verifies with these keys alone, "
                "selected by `kid`.",
            )
        },
    }


def _check_paths() -> Json:
    check_errors: Errors = (
        *_BEARER,
        InsufficientScope,
        BadRequest,
        InvalidIdNumber,
        *_CATALOG,
        PayloadTooLarge,
        RateLimited,
        PolicyDenied,
        *_CONSENT_REFUSED,
        ParameterEnumeration,
        *_AUDIT_WRITE,
    )
    return {
        "/v1/claims": {
            "get": _op(
                "listClaims",
                "checks",
                "The claims, purposes and parameters this caller may use",
                {"200": _json(ref("ClaimsResponse"), "Allowed claims and every purpose.")},
                (*_BEARER,),
                security=_oauth(),
            )
        },
        "/v1/checks": {
            "post": _op(
                "check",
                "checks",
                "Ask one yes/no question about one citizen",
                {"200": _json(ref("CheckResponse"), "The answer, signed, and its audit index.")},
                check_errors,
                security=_oauth("checks"),
                description="Pipeline: authenticate, validate (an invalid ID number is 422, "
                "never `no`), policy, consent, ask each department its predicate, combine, "
                "durable audit append, signed answer. A subject who is not found is answered "
                "`no`; a department that does not answer makes the result `undetermined`. "
                "Refusals by policy or consent are audited and carry `audit_index`. Body at "
                "most 64 KiB. Rate limits per requester and per (requester, subject): 429 "
                "`rate-limited` with `Retry-After`, refused before policy, not audited. A "
                "claim's enumerated parameter may take at most `param_limits` values per "
                "subject within its window (`GET /v1/claims`): another value is 403 "
                "`parameter-enumeration`, audited, and no department is asked.",
                requestBody=_body(ref("CheckRequest")),
            )
        },
        "/v1/checks/batch": {
            "post": _op(
                "checkBatch",
                "checks",
                "One claim and purpose for many subjects, one signed answer",
                {"200": _json(ref("BatchResponse"), "Per-subject results, in request order.")},
                (
                    *_BEARER,
                    InsufficientScope,
                    BadRequest,
                    *_CATALOG,
                    PayloadTooLarge,
                    RateLimited,
                    PolicyDenied,
                    *_AUDIT_WRITE,
                ),
                security=_oauth("checks:batch"),
                description=f"Up to {MAX_BATCH_SUBJECTS} subjects, each checked against "
                "policy and consent; an invalid ID number or a refused consent makes that "
                "item `invalid` or `denied` rather than failing the batch (as does another "
                "value of an enumerated parameter, reason `parameter-enumeration`). The "
                "invalid items share one summary audit entry. Body at most 2 MiB. "
                "Costs one requester rate-limit token per subject and one subject token per "
                "distinct subject: 429 `rate-limited` with `Retry-After` if any is short.",
                requestBody=_body(ref("BatchRequest")),
            )
        },
    }


def _citizen_paths() -> Json:
    consent_id = _path_param("consent_id", CONSENT_ID_PATTERN, "The consent's id.")
    location = {"Location": {"schema": {"type": "string"}, "description": "The new consent."}}
    return {
        "/v1/consents": {
            "post": _op(
                "grantConsent",
                "consent",
                "Grant consent (as the subject, or as a minor's guardian)",
                {"201": _json(ref("Consent"), "The consent, signed by the gateway.", **location)},
                (
                    *_CITIZEN,
                    BadRequest,
                    InvalidIdNumber,
                    UnknownRequester,
                    ClaimNotForPurpose,
                    UnknownClaim,
                    UnknownPurpose,
                    NotAGuardian,
                    GuardianUndetermined,
                    SubjectNotAMinor,
                    GuardianConsentRequired,
                    PayloadTooLarge,
                    StoreUnavailable,
                    AuditFailed,
                ),
                security=_CITIZEN_SECURITY,
                description="A child under 14 needs a guardian's consent; a guardian must be "
                "on record in the household registration (police `guardian_of`).",
                requestBody=_body(ref("ConsentGrant")),
            )
        },
        "/v1/consents/{consent_id}": {
            "parameters": [consent_id],
            "get": _op(
                "readConsent",
                "consent",
                "Read a consent I am the subject or grantor of",
                {"200": _json(ref("Consent"), "The consent as of now.")},
                (*_CITIZEN, NotFound, StoreUnavailable),
                security=_CITIZEN_SECURITY,
                description="Someone else's consent is a plain 404.",
            ),
            "delete": _op(
                "revokeConsent",
                "consent",
                "Revoke a consent; takes effect on the next check",
                {"200": _json(ref("Consent"), "The consent, now REVOKED.")},
                (*_CITIZEN, NotFound, ConsentNotActive, StoreUnavailable, AuditFailed),
                security=_CITIZEN_SECURITY,
            ),
        },
        "/v1/me/consents": {
            "get": _op(
                "myConsents",
                "citizen",
                "My consents (as subject or guardian), newest first",
                {"200": _json(ref("ConsentList"), "At most 1000 consents.")},
                (*_CITIZEN, StoreUnavailable),
                security=_CITIZEN_SECURITY,
            )
        },
        "/v1/me/access-log": {
            "get": _op(
                "myAccessLog",
                "citizen",
                "Every check about me and every officer lookup of me",
                {"200": _json(ref("AccessLog"), "Newest first.")},
                (*_CITIZEN, BadRequest, NotFound, StoreUnavailable),
                security=_CITIZEN_SECURITY,
                description="Who asked, which claim, for what purpose, under which legal basis "
                "or consent, with what result, and when.",
                parameters=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                        "Page size.",
                    ),
                    _query("cursor", _COUNT, "The `next` of the previous page."),
                ],
            )
        },
    }


def _audit_paths() -> Json:
    entry_filters = [
        _query("requester", {"type": "string"}, "Requester client id."),
        _query("claim", {"type": "string"}, "Claim name."),
        _query("purpose", {"type": "string"}, "Purpose name."),
        _query("decision", {"type": "string", "enum": ["allow", "deny"]}, "Policy decision."),
        _query("result", {"type": "string"}, "yes, no, undetermined, denied, invalid."),
        _query("kind", {"type": "string"}, "Entry kind, e.g. check, consent_granted."),
        _query("since", {"type": "string", "format": "date-time"}, "Entry time, inclusive."),
        _query("until", {"type": "string", "format": "date-time"}, "Entry time, exclusive."),
        _query("limit", {"type": "integer", "minimum": 1, "default": 50}, "Page size (max 500)."),
        _query("cursor", _COUNT, "The `next` of the previous page."),
        _query("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"}, "Order."),
    ]
    return {
        "/v1/audit/checkpoint": {
            "get": _op(
                "auditCheckpoint",
                "audit",
                "Latest signed checkpoint (C2SP signed note)",
                {
                    "200": {
                        "description": "Origin, tree size and base64 root, then signature "
                        "lines of the gateway and of witnessing departments.",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                (NotFound, StoreUnavailable),
            )
        },
        "/v1/audit/proofs/inclusion": {
            "get": _op(
                "auditInclusionProof",
                "audit",
                "RFC 9162 inclusion proof",
                {"200": _json(ref("InclusionProof"), "Audit path, leaf to root.")},
                (*_BEARER, BadRequest, Forbidden, NotFound, StoreUnavailable, AuditIntegrityError),
                security=_oauth(),
                description="With `audit:read`, for any entry; otherwise only for the caller's "
                "own entries (403 `forbidden`).",
                parameters=[
                    _query("index", _COUNT, "Leaf index.", required=True),
                    _query("size", {**_COUNT, "minimum": 1}, "Tree size.", required=True),
                ],
            )
        },
        "/v1/audit/proofs/consistency": {
            "get": _op(
                "auditConsistencyProof",
                "audit",
                "RFC 9162 consistency proof",
                {"200": _json(ref("ConsistencyProof"), "Proof that first is a prefix of second.")},
                (BadRequest, NotFound, StoreUnavailable, AuditIntegrityError),
                parameters=[
                    _query("first", _COUNT, "Older tree size.", required=True),
                    _query("second", _COUNT, "Newer tree size.", required=True),
                ],
            )
        },
        "/v1/audit/entries": {
            "get": _op(
                "auditEntries",
                "audit",
                "Search audit entries (privacy officers)",
                {"200": _json(ref("AuditEntries"), "A page of entries.")},
                (*_BEARER, InsufficientScope, BadRequest, SubjectInUrl, NotFound),
                security=_oauth("audit:read"),
                parameters=entry_filters,
                description="No `subject` here: an ID number in a URL is refused with 400 "
                "`subject-in-url` (URLs end up in access logs, proxies and histories); look a "
                "citizen up with `POST /v1/audit/entries/search`.",
            )
        },
        "/v1/audit/entries/search": {
            "post": _op(
                "auditEntriesSearch",
                "audit",
                "Search audit entries, by a citizen's ID number too (privacy officers)",
                {"200": _json(ref("AuditEntries"), "A page of entries.")},
                (
                    *_BEARER,
                    InsufficientScope,
                    BadRequest,
                    InvalidIdNumber,
                    NotFound,
                    *_AUDIT_WRITE,
                ),
                security=_oauth("audit:read"),
                requestBody=_body(ref("AuditSearch")),
                description="The filters of `GET /v1/audit/entries` in a JSON body, plus "
                "`subject`: a lookup by ID number is itself audited (`officer_lookup`) and "
                "shown to the citizen.",
            )
        },
    }


def _admin_paths() -> Json:
    change_id = _path_param("change_id", CHANGE_ID_PATTERN, "The policy change's id.")
    admin = _oauth("admin")
    return {
        "/v1/admin/policy": {
            "get": _op(
                "readPolicy",
                "admin",
                "The enforced policy, its version and pending changes",
                {"200": _json(ref("Policy"), "Rules include those derived from the catalog.")},
                (*_BEARER, InsufficientScope, StoreUnavailable),
                security=admin,
            )
        },
        "/v1/admin/policy/changes": {
            "post": _op(
                "proposePolicyChange",
                "admin",
                "Propose a policy change (needs a second administrator)",
                {"201": _json(ref("ChangeProposed"), "Recorded as pending and audited.")},
                (*_ADMIN, BadRequest, InvalidPolicy, ChangeConflict, PayloadTooLarge),
                security=admin,
                requestBody=_body(ref("PolicyChange")),
            )
        },
        "/v1/admin/policy/changes/{change_id}/approve": {
            "parameters": [change_id],
            "post": _op(
                "approvePolicyChange",
                "admin",
                "Approve another administrator's change; it takes effect now",
                {"200": _json(ref("ChangeApproved"), "The new policy version.")},
                (
                    *_ADMIN,
                    BadRequest,
                    InvalidPolicy,
                    TwoPersonRule,
                    UnknownChange,
                    ChangeNotPending,
                    ChangeConflict,
                ),
                security=admin,
            ),
        },
        "/v1/admin/policy/changes/{change_id}/reject": {
            "parameters": [change_id],
            "post": _op(
                "rejectPolicyChange",
                "admin",
                "Reject (or withdraw) a pending change",
                {"200": _json(ref("ChangeRejected"), "Closed without applying it.")},
                (*_ADMIN, BadRequest, UnknownChange, ChangeNotPending),
                security=admin,
            ),
        },
    }


def _statistics_paths() -> Json:
    analyst = _oauth("statistics")
    job_id = _path_param("job_id", "^st-[0-9a-f]{24}$", "The statistics job's id.")
    job = ref("StatisticJob")
    return {
        "/v1/statistics": {
            "get": _op(
                "listStatistics",
                "statistics",
                "The statistics offered, the disclosure threshold and the analyst's budget",
                {"200": _json(ref("StatisticsListing"), "The registry, threshold and budget.")},
                (*_BEARER, InsufficientScope),
                security=analyst,
            ),
            "post": _op(
                "submitStatistic",
                "statistics",
                "Run a Paillier statistic across departments under the analyst's key",
                {"202": _json(job, "Accepted and audited; fetch it at its Location.",
                              Location={"schema": {"type": "string"}})},
                (*_BEARER, InsufficientScope, BadRequest, UnknownStatistic, UnknownParameter,
                 InvalidPublicKey, InvalidEpsilon, JobDenied, BudgetExhausted, DpRequired,
                 StatisticUnavailable, PayloadTooLarge, *_AUDIT_WRITE),
                security=analyst,
                requestBody=_body(ref("StatisticRequest")),
            ),
        },
        "/v1/statistics/{job_id}": {
            "parameters": [job_id],
            "get": _op(
                "getStatistic",
                "statistics",
                "A statistics job and, when done, the summed ciphertexts",
                {"200": _json(job, "Only the requester who submitted the job may read it.")},
                (*_BEARER, InsufficientScope, NotFound),
                security=analyst,
            ),
        },
    }  # fmt: skip


def _federation_paths() -> Json:
    trainer = _oauth("federation")
    job_id = _path_param("job_id", "^fl-[0-9a-f]{24}$", "The federated training job's id.")
    job = ref("FederationJob")
    return {
        "/v1/federation/jobs": {
            "post": _op(
                "submitFederationJob",
                "federation",
                "Train the outreach model across county bureaus with Flower",
                {"202": _json(job, "Policy-checked and audited; follow it at its Location.",
                              Location={"schema": {"type": "string"}})},
                (*_BEARER, InsufficientScope, BadRequest, JobDenied, PayloadTooLarge,
                 *_AUDIT_WRITE),
                security=trainer,
                requestBody=_body(ref("FederationJobRequest")),
            ),
        },
        "/v1/federation/jobs/{job_id}": {
            "parameters": [job_id],
            "get": _op(
                "getFederationJob",
                "federation",
                "A training job's progress and, when done, its result",
                {"200": _json(job, "Only the requester who submitted the job may read it.")},
                (*_BEARER, InsufficientScope, NotFound),
                security=trainer,
            ),
        },
    }  # fmt: skip


def _operations_paths() -> Json:
    asset = {
        "name": "asset",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(DOCS_ASSETS)},
    }
    health = _op(
        "health",
        "operations",
        "Liveness and department reachability",
        {"200": _json(ref("Health"), "The gateway answers.")},
        (StoreUnavailable,),
    )
    not_ready = health["responses"]["503"]
    not_ready["content"]["application/json"] = {"schema": ref("Health")}
    not_ready["description"] += (
        "; or, as application/json with `status: unavailable`, not ready: the audit log is "
        "behind what a witness cosigned"
    )
    return {
        "/healthz": {"get": health},
        "/livez": {
            "get": _op(
                "livez",
                "operations",
                "Liveness: this process answers (asks nothing else)",
                {"200": _json(ref("Liveness"), "Alive.")},
                (),
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "operations",
                "Readiness: the stores answer and the audit log is not behind its witnesses",
                {
                    "200": _json(ref("Readiness"), "Ready for traffic."),
                    "503": _json(ref("Readiness"), "Not ready: `reasons` says why."),
                },
                (),
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "operations",
                "Prometheus metrics (text exposition format)",
                {
                    "200": {
                        "description": "Request counts and latency per route template, checks "
                        "and department calls by outcome (never an answer, never a requester), "
                        "audit appends and tree size. Labels never carry personal data. "
                        "`text/plain; version=0.0.4` unless the scraper's Accept asks for "
                        "OpenMetrics.",
                        "content": {
                            media: {"schema": {"type": "string"}} for media in METRICS_MEDIA_TYPES
                        },
                    }
                },
                (MetricsUnauthenticated,),
                security=[{"metricsToken": []}],
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "docs",
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match)."},
                },
                (),
            )
        },
        "/docs": {
            "get": _op(
                "docs",
                "docs",
                "This document in Swagger UI, with try-it-out",
                {
                    "200": {
                        "description": "Swagger UI (vendored, served from /docs/{asset}; no "
                        "CDN) on /openapi.json. Authorize with OAuth 2.0 client credentials "
                        "(client id and secret), then try operations against this gateway. "
                        "Content-Security-Policy: scripts, styles and requests same-origin "
                        "only, no inline script, no eval.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match)."},
                },
                (),
            )
        },
        "/docs/{asset}": {
            "parameters": [asset],
            "get": _op(
                "docsAsset",
                "docs",
                "Script and style sheet of the docs page",
                {
                    "200": {
                        "description": "JavaScript or CSS.",
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted(set(DOCS_ASSETS.values()))
                        },
                    },
                    "304": {"description": "Not modified (If-None-Match)."},
                },
                (NotFound,),
            ),
        },
    }


def paths() -> Json:
    """Every route of the gateway, sorted by path."""
    out: Json = {
        **_oauth_paths(),
        **_check_paths(),
        **_citizen_paths(),
        **_audit_paths(),
        **_admin_paths(),
        **_statistics_paths(),
        **_federation_paths(),
        **_operations_paths(),
    }
    return dict(sorted(out.items()))
