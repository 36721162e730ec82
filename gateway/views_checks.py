"""Requester endpoints (checks, batch, claims) and administrators' policy changes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from tongban.policies import InvalidPolicy, PolicyAdmin
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest

from .checks import Checker
from .models import BatchRequest, CheckRequest, PolicyChange
from .oauth.flask import current_principal, require_token
from .views_common import json_body

__all__ = ["BATCH_MAX_BODY", "checks_blueprint"]

BATCH_MAX_BODY = 2 * 1024 * 1024  # 10,000 subjects with consent ids


def checks_blueprint(checker: Checker, admin: PolicyAdmin | None) -> Blueprint:
    bp = Blueprint("checks", __name__)

    @bp.post("/v1/checks")
    @require_token("checks")
    def check() -> Response:
        body = parse_body(CheckRequest, json_body())
        answer = checker.check(current_principal().client_id, body, g.get("request_id", ""))
        return jsonify(answer.model_dump(exclude_none=True))

    @bp.post("/v1/checks/batch")
    @require_token("checks:batch")
    def batch() -> Response:
        body = parse_body(BatchRequest, json_body())
        answer = checker.batch(current_principal().client_id, body, g.get("request_id", ""))
        return jsonify(answer.model_dump(exclude_none=True))

    @bp.get("/v1/claims")
    @require_token()
    def claims() -> Response:
        principal = current_principal()
        purposes = {
            name: {"title": p.title, "title_zh": p.title_zh}
            for name, p in checker.catalog.purposes.items()
        }
        return jsonify(claims=checker.allowed(principal.client_id), purposes=purposes)

    @bp.get("/v1/admin/policy")
    @require_token("admin")
    def policy() -> Response:
        enforcer = checker.enforcer
        return jsonify(
            version=enforcer.version,
            rules=[list(r.as_list()) for r in sorted(enforcer.policy.rules)],
            legal_bases=dict(enforcer.policy.legal_bases),
            pending=[_change(c) for c in (admin.pending() if admin else [])],
        )

    @bp.post("/v1/admin/policy/changes")
    @require_token("admin")
    def propose() -> tuple[Response, int]:
        change = parse_body(PolicyChange, json_body(), "change", error=InvalidPolicy).to_change()
        change_id = _admin().propose(current_principal().client_id, change)
        return jsonify(id=change_id, status="pending"), 201

    @bp.post("/v1/admin/policy/changes/<change_id>/approve")
    @require_token("admin")
    def approve(change_id: str) -> Response:
        version = _admin().approve(change_id, current_principal().client_id)
        return jsonify(id=change_id, status="approved", policy_version=version)

    @bp.post("/v1/admin/policy/changes/<change_id>/reject")
    @require_token("admin")
    def reject(change_id: str) -> Response:
        _admin().reject(change_id, current_principal().client_id)
        return jsonify(id=change_id, status="rejected")

    def _admin() -> PolicyAdmin:
        if admin is None:
            raise BadRequest("policy administration is not enabled on this gateway")
        return admin

    return bp


def _change(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "proposer": record.proposer,
        "status": str(record.status),
        "change": dict(record.body),
        "base_version": record.base_version,
    }
