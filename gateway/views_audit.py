"""Audit endpoints: checkpoints, proofs, and the officers' entry search. Thin: parse,
call the log, render."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, jsonify, request

from tongban.audit.log import AuditIntegrityError, AuditLog, StoredEntry
from tongban.primitives.errors import (
    BadRequest,
    Forbidden,
    InvalidIdNumber,
    NotFound,
    StoreUnavailable,
)

from .models import (
    AuditEntries,
    AuditFilters,
    AuditSearch,
    ConsistencyProof,
    ConsistencyQuery,
    InclusionProof,
    InclusionQuery,
)
from .oauth.flask import current_principal
from .operations import AUDIT_WRITE, Operation, Out
from .services import AuditEvents, Gateway

__all__ = ["OPERATIONS", "SubjectInUrl", "audit_blueprint"]


class SubjectInUrl(BadRequest):
    """An ID number in a query string: refused, so that clients move it to a body."""

    slug = "subject-in-url"
    title = "An ID number may not be sent in a URL"


_MAX_PAGE = 500
_FILTERS = ("requester", "claim", "purpose", "decision", "result", "kind", "since", "until")


def _time_arg(name: str, raw: object) -> str:
    """An RFC 3339 date-time with a zone, as the log writes times (UTC, ms, ``Z``), so the
    store's text comparison is a time comparison; anything else is refused, not matched."""
    if not isinstance(raw, str):
        raise BadRequest(f"{name}: expected an RFC 3339 date-time with a time zone")
    try:
        when = dt.datetime.fromisoformat(raw) if len(raw) <= 40 and raw.isascii() else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise BadRequest(f"{name}: expected an RFC 3339 date-time with a time zone")
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _render(e: StoredEntry) -> dict[str, object]:
    return {"index": e.index, "leaf_hash": e.leaf_hash.hex(), "entry": e.entry}


def _search(log: AuditLog, query: AuditFilters) -> Response:
    """The officers' entry search, from query parameters or a JSON body."""
    filters: dict[str, str] = {}
    for name in _FILTERS:
        value = getattr(query, name)
        if value in (None, ""):
            continue
        filters[name] = _time_arg(name, value) if name in ("since", "until") else value
    if isinstance(query, AuditSearch):
        number = query.subject
        filters["subject"] = AuditEvents(log).officer_lookup(current_principal().client_id, number)
    try:
        rows, nxt = log.entries(
            filters,
            cursor=query.cursor,
            limit=min(query.limit, _MAX_PAGE),
            newest_first=query.order == "desc",
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify(entries=[_render(e) for e in rows], next=nxt)


CHECKPOINT = Operation(
    "GET",
    "/v1/audit/checkpoint",
    "auditCheckpoint",
    "audit",
    "Latest signed checkpoint (C2SP signed note)",
    (
        Out(
            {"type": "string"},
            "Origin, tree size and base64 root, then signature lines of "
            "the gateway and of witnessing departments.",
            media=("text/plain",),
        ),
    ),
    (NotFound, StoreUnavailable),
)
INCLUSION = Operation(
    "GET",
    "/v1/audit/proofs/inclusion",
    "auditInclusionProof",
    "audit",
    "RFC 9162 inclusion proof",
    (Out(InclusionProof, "Audit path, leaf to root."),),
    (Forbidden, NotFound, StoreUnavailable, AuditIntegrityError),
    scopes=(),
    query=InclusionQuery,
    description="With `audit:read`, for any entry; otherwise only for the caller's own "
    "entries (403 `forbidden`).",
)
CONSISTENCY = Operation(
    "GET",
    "/v1/audit/proofs/consistency",
    "auditConsistencyProof",
    "audit",
    "RFC 9162 consistency proof",
    (Out(ConsistencyProof, "Proof that first is a prefix of second."),),
    (NotFound, StoreUnavailable, AuditIntegrityError),
    query=ConsistencyQuery,
)
ENTRIES = Operation(
    "GET",
    "/v1/audit/entries",
    "auditEntries",
    "audit",
    "Search audit entries (privacy officers)",
    (Out(AuditEntries, "A page of entries."),),
    (SubjectInUrl, NotFound),
    scopes=("audit:read",),
    query=AuditFilters,
    description="No `subject` here: an ID number in a URL is refused with 400 "
    "`subject-in-url` (URLs end up in access logs, proxies and histories); look a citizen "
    "up with `POST /v1/audit/entries/search`.",
)
SEARCH = Operation(
    "POST",
    "/v1/audit/entries/search",
    "auditEntriesSearch",
    "audit",
    "Search audit entries, by a citizen's ID number too (privacy officers)",
    (Out(AuditEntries, "A page of entries."),),
    (InvalidIdNumber, NotFound, *AUDIT_WRITE),
    scopes=("audit:read",),
    body=AuditSearch,
    description="The filters of `GET /v1/audit/entries` in a JSON body, plus `subject`: a "
    "lookup by ID number is itself audited (`officer_lookup`) and shown to the citizen.",
)
OPERATIONS = (CHECKPOINT, INCLUSION, CONSISTENCY, ENTRIES, SEARCH)


def audit_blueprint(gateway: Gateway) -> Blueprint:
    bp = Blueprint("audit", __name__)
    audit: AuditLog | None = gateway.audit

    def log() -> AuditLog:
        if audit is None:
            raise NotFound("this gateway keeps no audit log")
        return audit

    @CHECKPOINT.route(bp)
    def checkpoint() -> Response:
        note = log().latest_checkpoint()
        if note is None:
            raise NotFound("no checkpoint yet")
        return Response(note.text(), 200, mimetype="text/plain")

    @CONSISTENCY.route(bp)
    def consistency(query: ConsistencyQuery) -> Response:
        first, second = query.first, query.second
        if not first <= second <= log().refresh():
            raise BadRequest("first/second: need first <= second <= tree size")
        path = log().consistency_proof(first, second)
        return jsonify(first=first, second=second, consistency_path=[h.hex() for h in path])

    @INCLUSION.route(bp)
    def inclusion(query: InclusionQuery) -> Response:
        index, size = query.index, query.size
        if not index < size <= log().refresh():
            raise BadRequest("index/size: need index < size <= tree size")
        principal = current_principal()
        # The leaf is the hash of the entry's own bytes, checked against the tree (a row
        # edited since start-up is refused as audit-integrity, never proven).
        entry = log().get(index)
        if entry is None:
            raise BadRequest("index: no such entry")
        if "audit:read" not in principal.scopes and (
            entry.entry.get("requester") != principal.client_id
        ):
            # A requester may prove its own entries, and only those.
            raise Forbidden("inclusion proofs: only for your own entries")
        return jsonify(
            index=index,
            tree_size=size,
            leaf_hash=entry.leaf_hash.hex(),
            audit_path=[h.hex() for h in log().inclusion_proof(index, size)],
        )

    @ENTRIES.route(bp)
    def entries(query: AuditFilters) -> Response:
        if "subject" in request.args:
            # An ID number in a URL ends up in access logs, proxies and browser history.
            raise SubjectInUrl(
                "subject: an ID number never goes in a URL: POST /v1/audit/entries/search "
                'with {"subject": …} in the body'
            )
        return _search(log(), query)

    @SEARCH.route(bp)
    def search(body: AuditSearch) -> Response:
        return _search(log(), body)

    return bp
