"""Requester endpoints (checks, batch, claims) and administrators' policy changes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from tongban.policies import ChangeRecord, InvalidPolicy, PolicyAdmin, change_kind
from tongban.policies.errors import (
    AuditFailed,
    ChangeConflict,
    ChangeNotPending,
    TwoPersonRule,
    UnknownChange,
)
from tongban.primitives.errors import (
    BadRequest,
    InvalidIdNumber,
    RateLimited,
    StoreUnavailable,
    UnknownParameter,
)

from .catalog import UnknownClaim, UnknownPurpose
from .checks import MAX_BATCH_SUBJECTS, Checker, PolicyDenied
from .consent import (
    ConsentExhausted,
    ConsentExpired,
    ConsentMismatch,
    ConsentNotFound,
    ConsentNotYetValid,
    ConsentRefused,
    ConsentRequired,
    ConsentRevoked,
)
from .enumeration import ParameterEnumeration
from .models import (
    BatchRequest,
    BatchResponse,
    ChangeApproved,
    ChangeProposed,
    ChangeRejected,
    CheckRequest,
    CheckResponse,
    ClaimsResponse,
    Policy,
    PolicyChange,
)
from .oauth.flask import current_principal
from .operations import AUDIT_WRITE, Errors, Operation, Out

__all__ = [
    "BATCH_MAX_BODY",
    "CHANGE_ID_PATTERN",
    "OPERATIONS",
    "checks_blueprint",
    "pending_change",
]

CHANGE_ID_PATTERN = "^[0-9a-f]{32}$"  # uuid4().hex

BATCH_MAX_BODY = 2 * 1024 * 1024  # 10,000 subjects with consent ids


_CATALOG: Errors = (UnknownClaim, UnknownPurpose, UnknownParameter)
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
_ADMIN: Errors = (StoreUnavailable, AuditFailed)
_CHANGE_ID = {"change_id": (CHANGE_ID_PATTERN, "The policy change's id.")}

CHECK = Operation(
    "POST",
    "/v1/checks",
    "check",
    "checks",
    "Ask one yes/no question about one citizen",
    (Out(CheckResponse, "The answer, signed, and its audit index."),),
    (
        InvalidIdNumber,
        *_CATALOG,
        RateLimited,
        PolicyDenied,
        *_CONSENT_REFUSED,
        ParameterEnumeration,
        *AUDIT_WRITE,
    ),
    scopes=("checks",),
    body=CheckRequest,
    description="Pipeline: authenticate, validate (an invalid ID number is 422, never `no`), "
    "policy, consent, ask each department its predicate, combine, durable audit append, "
    "signed answer. A subject who is not found is answered `no`; a department that does not "
    "answer makes the result `undetermined`. Refusals by policy or consent are audited and "
    "carry `audit_index`. Body at most 64 KiB. Rate limits per requester and per "
    "(requester, subject): 429 `rate-limited` with `Retry-After`, refused before policy, not "
    "audited. A claim's enumerated parameter may take at most `param_limits` values per "
    "subject within its window (`GET /v1/claims`): another value is 403 "
    "`parameter-enumeration`, audited, and no department is asked.",
)
BATCH = Operation(
    "POST",
    "/v1/checks/batch",
    "checkBatch",
    "checks",
    "One claim and purpose for many subjects, one signed answer",
    (Out(BatchResponse, "Per-subject results, in request order."),),
    (*_CATALOG, RateLimited, PolicyDenied, *AUDIT_WRITE),
    scopes=("checks:batch",),
    body=BatchRequest,
    description=f"Up to {MAX_BATCH_SUBJECTS} subjects, each checked against policy and "
    "consent; an invalid ID number or a refused consent makes that item `invalid` or "
    "`denied` rather than failing the batch (as does another value of an enumerated "
    "parameter, reason `parameter-enumeration`). The invalid items share one summary audit "
    "entry. Body at most 2 MiB. Costs one requester rate-limit token per subject and one "
    "subject token per distinct subject: 429 `rate-limited` with `Retry-After` if any is "
    "short.",
)
CLAIMS = Operation(
    "GET",
    "/v1/claims",
    "listClaims",
    "checks",
    "The claims, purposes and parameters this caller may use",
    (Out(ClaimsResponse, "Allowed claims and every purpose."),),
    scopes=(),
)
POLICY = Operation(
    "GET",
    "/v1/admin/policy",
    "readPolicy",
    "admin",
    "The enforced policy, its version and pending changes",
    (Out(Policy, "Rules include those derived from the catalog."),),
    (StoreUnavailable,),
    scopes=("admin",),
)
PROPOSE = Operation(
    "POST",
    "/v1/admin/policy/changes",
    "proposePolicyChange",
    "admin",
    "Propose a policy change (needs a second administrator)",
    (Out(ChangeProposed, "Recorded as pending and audited.", 201),),
    (*_ADMIN, InvalidPolicy, ChangeConflict),
    scopes=("admin",),
    body=PolicyChange,
    body_root="change",
    body_error=InvalidPolicy,
)
APPROVE = Operation(
    "POST",
    "/v1/admin/policy/changes/{change_id}/approve",
    "approvePolicyChange",
    "admin",
    "Approve another administrator's change; it takes effect now",
    (Out(ChangeApproved, "The new policy version."),),
    (
        *_ADMIN,
        BadRequest,
        InvalidPolicy,
        TwoPersonRule,
        UnknownChange,
        ChangeNotPending,
        ChangeConflict,
    ),
    scopes=("admin",),
    path_params=_CHANGE_ID,
)
REJECT = Operation(
    "POST",
    "/v1/admin/policy/changes/{change_id}/reject",
    "rejectPolicyChange",
    "admin",
    "Reject (or withdraw) a pending change",
    (Out(ChangeRejected, "Closed without applying it."),),
    (*_ADMIN, BadRequest, UnknownChange, ChangeNotPending),
    scopes=("admin",),
    path_params=_CHANGE_ID,
)
OPERATIONS = (CHECK, BATCH, CLAIMS, POLICY, PROPOSE, APPROVE, REJECT)


def checks_blueprint(checker: Checker, admin: PolicyAdmin | None) -> Blueprint:
    bp = Blueprint("checks", __name__)

    @CHECK.route(bp)
    def check(body: CheckRequest) -> Response:
        answer = checker.check(current_principal().client_id, body, g.get("request_id", ""))
        return jsonify(answer.model_dump(exclude_none=True))

    @BATCH.route(bp)
    def batch(body: BatchRequest) -> Response:
        answer = checker.batch(current_principal().client_id, body, g.get("request_id", ""))
        return jsonify(answer.model_dump(exclude_none=True))

    @CLAIMS.route(bp)
    def claims() -> Response:
        principal = current_principal()
        purposes = {
            name: {"title": p.title, "title_zh": p.title_zh}
            for name, p in checker.catalog.purposes.items()
        }
        return jsonify(claims=checker.allowed(principal.client_id), purposes=purposes)

    @POLICY.route(bp)
    def policy() -> Response:
        enforcer = checker.enforcer
        return jsonify(
            version=enforcer.version,
            rules=[list(r.as_list()) for r in sorted(enforcer.policy.rules)],
            legal_bases=dict(enforcer.policy.legal_bases),
            pending=[pending_change(c) for c in (admin.pending() if admin else [])],
        )

    @PROPOSE.route(bp)
    def propose(body: PolicyChange) -> tuple[Response, int]:
        change_id = _admin().propose(current_principal().client_id, body.to_change())
        return jsonify(id=change_id, status="pending"), 201

    @APPROVE.route(bp)
    def approve(change_id: str) -> Response:
        version = _admin().approve(change_id, current_principal().client_id)
        return jsonify(id=change_id, status="approved", policy_version=version)

    @REJECT.route(bp)
    def reject(change_id: str) -> Response:
        _admin().reject(change_id, current_principal().client_id)
        return jsonify(id=change_id, status="rejected")

    def _admin() -> PolicyAdmin:
        if admin is None:
            raise BadRequest("policy administration is not enabled on this gateway")
        return admin

    return bp


def pending_change(record: ChangeRecord) -> dict[str, Any]:
    """A pending change as ``GET /v1/admin/policy`` and ``/v1/admin/changes`` show it."""
    return {
        "id": record.id,
        "kind": change_kind(record),
        "proposer": record.proposer,
        "status": str(record.status),
        "change": dict(record.body),
        "base_version": record.base_version,
    }
