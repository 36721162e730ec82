"""Citizen endpoints: grant, read and revoke consent; see who asked about me. Thin: parse,
call the consent store or the audit log, render.

Every view takes the citizen from an IdP-signed token (:func:`require_citizen`); the ID
number never appears in a response, only its masked form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request

from tongban.audit.log import AuditLog, StoredEntry
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, NotFound

from .consent import ConsentStore
from .models import ConsentGrant
from .oauth.flask import current_citizen, require_citizen
from .services import Gateway
from .views_common import json_body

__all__ = ["ACCESS_LOG_KINDS", "citizen_blueprint"]

# What a citizen sees in their access log: every check about them, and every time a
# privacy officer looked them up.
ACCESS_LOG_KINDS = ("check", "officer_lookup")
_DEFAULT_PAGE = 50
_MAX_PAGE = 200


def _int_arg(name: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name}: expected a non-negative integer")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name}: expected {minimum} to {maximum}")
    return value


def _decision(entry: Mapping[str, Any]) -> str:
    """``allowed`` or ``denied``. A check the pipeline refused after policy allowed it (no
    consent, say) records ``result: denied`` and an ``error``, so those win; otherwise the
    policy decision (an object with ``allowed``, or a bool), else whether it was answered."""
    if entry.get("result") == "denied" or entry.get("error") is not None:
        return "denied"
    decision = entry.get("decision")
    if isinstance(decision, Mapping):
        decision = decision.get("allowed")
    if isinstance(decision, bool):
        return "allowed" if decision else "denied"
    return "allowed" if entry.get("result") in ("yes", "no", "undetermined") else "denied"


class _Names:
    """Requester display names, looked up once per response."""

    def __init__(self, consents: ConsentStore) -> None:
        self._registry = consents.registry
        self._seen: dict[str, str | None] = {}

    def __call__(self, client_id: object) -> str | None:
        if not isinstance(client_id, str):
            return None
        if client_id not in self._seen:
            client = self._registry.get(client_id)
            self._seen[client_id] = None if client is None else client.display_name
        return self._seen[client_id]


def _access_item(stored: StoredEntry, names: _Names) -> dict[str, Any]:
    e = stored.entry
    item: dict[str, Any] = {
        "index": stored.index,
        "time": e.get("time"),
        "kind": e.get("kind"),
        "requester": e.get("requester"),
        "requester_name": names(e.get("requester")),
    }
    if e.get("kind") == "check":
        item.update(
            claim=e.get("claim"),
            purpose=e.get("purpose"),
            result=e.get("result"),
            decision=_decision(e),
        )
        for optional in ("params", "legal_basis", "consent_id"):
            if e.get(optional) is not None:
                item[optional] = e[optional]
        error = e.get("error")
        if isinstance(error, str):  # the problem slug the requester was refused with
            item["reason"] = error.split(":", 1)[0]
    return item


def citizen_blueprint(gateway: Gateway, consents: ConsentStore) -> Blueprint:
    bp = Blueprint("citizen", __name__)
    audit: AuditLog | None = gateway.audit

    @bp.post("/v1/consents")
    @require_citizen
    def grant() -> Response:
        body = parse_body(ConsentGrant, json_body(force=True))
        consent = consents.grant(current_citizen().id_number, body)
        resp = jsonify(consent.to_json())
        resp.status_code = 201
        resp.headers["Location"] = f"/v1/consents/{consent.id}"
        return resp

    @bp.get("/v1/consents/<consent_id>")
    @require_citizen
    def read(consent_id: str) -> Response:
        return jsonify(consents.get(consent_id, current_citizen().id_number).to_json())

    @bp.delete("/v1/consents/<consent_id>")
    @require_citizen
    def revoke(consent_id: str) -> Response:
        return jsonify(consents.revoke(consent_id, current_citizen().id_number).to_json())

    @bp.get("/v1/me/consents")
    @require_citizen
    def mine() -> Response:
        found = consents.list_for(current_citizen().id_number)
        return jsonify(consents=[c.to_json() for c in found])

    @bp.get("/v1/me/access-log")
    @require_citizen
    def access_log() -> Response:
        if audit is None:
            raise NotFound("this gateway keeps no audit log")
        limit = _int_arg("limit", _DEFAULT_PAGE, minimum=1, maximum=_MAX_PAGE) or _DEFAULT_PAGE
        cursor = _int_arg("cursor", None, minimum=0, maximum=2**62)
        me = audit.pseudonyms.pseudonym(current_citizen().id_number)
        # One indexed query per kind, merged: the newest `limit` of the union are among
        # the newest `limit` of each kind, so the page and its cursor are exact.
        rows: list[StoredEntry] = []
        more = False
        for kind in ACCESS_LOG_KINDS:
            found, nxt = audit.entries(
                {"kind": kind, "subject": me}, cursor=cursor, limit=limit, newest_first=True
            )
            rows.extend(found)
            more = more or nxt is not None
        rows.sort(key=lambda r: r.index, reverse=True)
        more = more or len(rows) > limit
        page = rows[:limit]
        names = _Names(consents)
        return jsonify(
            entries=[_access_item(r, names) for r in page],
            next=page[-1].index if more and page else None,
        )

    return bp
