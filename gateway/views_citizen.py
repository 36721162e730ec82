"""Citizen endpoints: grant, read and revoke consent; see who asked about me. Thin: parse,
call the consent store or the audit log, render.

Every view takes the citizen from an IdP-signed token (:func:`require_citizen`); the ID
number never appears in a response, only its masked form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, jsonify

from tongban.audit.log import AuditLog, StoredEntry
from tongban.policies.errors import AuditFailed
from tongban.primitives.errors import InvalidIdNumber, NotFound, StoreUnavailable

from .catalog import UnknownClaim, UnknownPurpose
from .consent import (
    ClaimNotForPurpose,
    ConsentNotActive,
    ConsentStore,
    GuardianConsentRequired,
    GuardianUndetermined,
    NotAGuardian,
    SubjectNotAMinor,
    UnknownRequester,
)
from .models import AccessLog, AccessLogQuery, Consent, ConsentGrant, ConsentList
from .oauth.flask import current_citizen
from .operations import Operation, Out
from .services import Gateway

__all__ = ["ACCESS_LOG_KINDS", "CONSENT_ID_PATTERN", "OPERATIONS", "citizen_blueprint"]

# What a citizen sees in their access log: every check about them, and every time a
# privacy officer looked them up.
ACCESS_LOG_KINDS = ("check", "officer_lookup")


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


CONSENT_ID_PATTERN = "^[A-Za-z0-9_-]{22}$"  # secrets.token_urlsafe(16)
_CONSENT_ID = {"consent_id": (CONSENT_ID_PATTERN, "The consent's id.")}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "The new consent."}}

GRANT = Operation(
    "POST",
    "/v1/consents",
    "grantConsent",
    "consent",
    "Grant consent (as the subject, or as a minor's guardian)",
    (Out(Consent, "The consent, signed by the gateway.", 201, headers=_LOCATION),),
    (
        InvalidIdNumber,
        UnknownRequester,
        ClaimNotForPurpose,
        UnknownClaim,
        UnknownPurpose,
        NotAGuardian,
        GuardianUndetermined,
        SubjectNotAMinor,
        GuardianConsentRequired,
        StoreUnavailable,
        AuditFailed,
    ),
    citizen=True,
    body=ConsentGrant,
    force_json=True,
    description="A child under 14 needs a guardian's consent; a guardian must be on record "
    "in the household registration (police `guardian_of`).",
)
READ = Operation(
    "GET",
    "/v1/consents/{consent_id}",
    "readConsent",
    "consent",
    "Read a consent I am the subject or grantor of",
    (Out(Consent, "The consent as of now."),),
    (NotFound, StoreUnavailable),
    citizen=True,
    path_params=_CONSENT_ID,
    description="Someone else's consent is a plain 404.",
)
REVOKE = Operation(
    "DELETE",
    "/v1/consents/{consent_id}",
    "revokeConsent",
    "consent",
    "Revoke a consent; takes effect on the next check",
    (Out(Consent, "The consent, now REVOKED."),),
    (NotFound, ConsentNotActive, StoreUnavailable, AuditFailed),
    citizen=True,
    path_params=_CONSENT_ID,
)
MINE = Operation(
    "GET",
    "/v1/me/consents",
    "myConsents",
    "citizen",
    "My consents (as subject or guardian), newest first",
    (Out(ConsentList, "At most 1000 consents."),),
    (StoreUnavailable,),
    citizen=True,
)
ACCESS_LOG = Operation(
    "GET",
    "/v1/me/access-log",
    "myAccessLog",
    "citizen",
    "Every check about me and every officer lookup of me",
    (Out(AccessLog, "Newest first."),),
    (NotFound, StoreUnavailable),
    citizen=True,
    query=AccessLogQuery,
    description="Who asked, which claim, for what purpose, under which legal basis or "
    "consent, with what result, and when.",
)
OPERATIONS = (GRANT, READ, REVOKE, MINE, ACCESS_LOG)


def citizen_blueprint(gateway: Gateway, consents: ConsentStore) -> Blueprint:
    bp = Blueprint("citizen", __name__)
    audit: AuditLog | None = gateway.audit

    @GRANT.route(bp)
    def grant(body: ConsentGrant) -> Response:
        consent = consents.grant(current_citizen().id_number, body)
        resp = jsonify(consent.to_json())
        resp.status_code = 201
        resp.headers["Location"] = f"/v1/consents/{consent.id}"
        return resp

    @READ.route(bp)
    def read(consent_id: str) -> Response:
        return jsonify(consents.get(consent_id, current_citizen().id_number).to_json())

    @REVOKE.route(bp)
    def revoke(consent_id: str) -> Response:
        return jsonify(consents.revoke(consent_id, current_citizen().id_number).to_json())

    @MINE.route(bp)
    def mine() -> Response:
        found = consents.list_for(current_citizen().id_number)
        return jsonify(consents=[c.to_json() for c in found])

    @ACCESS_LOG.route(bp)
    def access_log(query: AccessLogQuery) -> Response:
        if audit is None:
            raise NotFound("this gateway keeps no audit log")
        limit, cursor = query.limit, query.cursor
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
