"""Audit endpoints: checkpoints, proofs, and the officers' entry search. Thin: parse,
call the log, render."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from flask import Blueprint, Response, jsonify, request

from tongban.audit.log import AuditLog, StoredEntry
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, Forbidden, NotFound

from .models import AuditFilters, AuditSearch
from .oauth.flask import current_principal, require_token
from .services import AuditEvents, Gateway

__all__ = ["SubjectInUrl", "audit_blueprint"]


class SubjectInUrl(BadRequest):
    """An ID number in a query string: refused, so that clients move it to a body."""

    slug = "subject-in-url"
    title = "An ID number may not be sent in a URL"


_MAX_PAGE = 500
_FILTERS = ("requester", "claim", "purpose", "decision", "result", "kind", "since", "until")


def _int_arg(name: str, *, minimum: int = 0, source: Mapping[str, object] | None = None) -> int:
    raw = (request.args if source is None else source).get(name)
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"{name}: expected a non-negative integer")
    value = int(raw)
    if value < minimum:
        raise BadRequest(f"{name}: expected at least {minimum}")
    return value


def _time_arg(name: str, source: Mapping[str, object] | None = None) -> str:
    """An RFC 3339 date-time with a zone, as the log writes times (UTC, ms, ``Z``), so the
    store's text comparison is a time comparison; anything else is refused, not matched."""
    raw = (request.args if source is None else source).get(name, "")
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
        filters[name] = _time_arg(name, {name: value}) if name in ("since", "until") else value
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


def audit_blueprint(gateway: Gateway) -> Blueprint:
    bp = Blueprint("audit", __name__)
    audit: AuditLog | None = gateway.audit

    def log() -> AuditLog:
        if audit is None:
            raise NotFound("this gateway keeps no audit log")
        return audit

    @bp.get("/v1/audit/checkpoint")
    def checkpoint() -> Response:
        note = log().latest_checkpoint()
        if note is None:
            raise NotFound("no checkpoint yet")
        return Response(note.text(), 200, mimetype="text/plain")

    @bp.get("/v1/audit/proofs/consistency")
    def consistency() -> Response:
        first, second = _int_arg("first"), _int_arg("second")
        if not first <= second <= log().refresh():
            raise BadRequest("first/second: need first <= second <= tree size")
        path = log().consistency_proof(first, second)
        return jsonify(first=first, second=second, consistency_path=[h.hex() for h in path])

    @bp.get("/v1/audit/proofs/inclusion")
    @require_token()
    def inclusion() -> Response:
        index, size = _int_arg("index"), _int_arg("size", minimum=1)
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

    @bp.get("/v1/audit/entries")
    @require_token("audit:read")
    def entries() -> Response:
        if "subject" in request.args:
            # An ID number in a URL ends up in access logs, proxies and browser history.
            raise SubjectInUrl(
                "subject: an ID number never goes in a URL: POST /v1/audit/entries/search "
                'with {"subject": …} in the body'
            )
        # Query parameters are text: parsed leniently (limit=5 is 5); others are ignored.
        known = {k: v for k, v in request.args.items() if k in AuditFilters.model_fields}
        return _search(log(), parse_body(AuditFilters, known, root="query", strict=False))

    @bp.post("/v1/audit/entries/search")
    @require_token("audit:read")
    def search() -> Response:
        body = request.get_json()
        if isinstance(body, dict) and "subject" not in body:
            raise BadRequest("subject: required here (without one, GET /v1/audit/entries)")
        return _search(log(), parse_body(AuditSearch, body))

    return bp
