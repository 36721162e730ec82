"""Audit endpoints: checkpoints, proofs, and the officers' entry search. Thin: parse,
call the log, render."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, jsonify, request

from tongban.audit.log import AuditLog, StoredEntry
from tongban.primitives.errors import BadRequest, Forbidden, NotFound
from tongban.primitives.idnumber import parse

from .oauth.flask import current_principal, require_token
from .services import AuditEvents, Gateway, utc_now

__all__ = ["audit_blueprint"]

_MAX_PAGE = 500
_FILTERS = ("requester", "claim", "purpose", "decision", "result", "kind", "since", "until")


def _int_arg(name: str, *, minimum: int = 0) -> int:
    raw = request.args.get(name)
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"{name}: expected a non-negative integer")
    value = int(raw)
    if value < minimum:
        raise BadRequest(f"{name}: expected at least {minimum}")
    return value


def _time_arg(name: str) -> str:
    """An RFC 3339 date-time with a zone, as the log writes times (UTC, ms, ``Z``), so the
    store's text comparison is a time comparison; anything else is refused, not matched."""
    raw = request.args.get(name, "")
    try:
        when = dt.datetime.fromisoformat(raw) if len(raw) <= 40 and raw.isascii() else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise BadRequest(f"{name}: expected an RFC 3339 date-time with a time zone")
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _render(e: StoredEntry) -> dict[str, object]:
    return {"index": e.index, "leaf_hash": e.leaf_hash.hex(), "entry": e.entry}


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
        filters = {k: request.args[k] for k in _FILTERS if request.args.get(k)}
        for name in ("since", "until"):
            if name in filters:
                filters[name] = _time_arg(name)
        limit = _int_arg("limit", minimum=1) if "limit" in request.args else 50
        cursor = _int_arg("cursor") if "cursor" in request.args else None
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequest("order: expected asc or desc")
        subject = request.args.get("subject")
        if subject:
            number = parse(subject).number
            filters["subject"] = log().pseudonyms.pseudonym(number)
            # Looking a citizen up is itself an access to personal data: record it.
            AuditEvents(log()).append(
                {"kind": "officer_lookup", "requester": current_principal().client_id,
                 "time": utc_now()},
                subject_id=number,
            )  # fmt: skip
        try:
            rows, nxt = log().entries(
                filters, cursor=cursor, limit=min(limit, _MAX_PAGE), newest_first=order == "desc"
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return jsonify(entries=[_render(e) for e in rows], next=nxt)

    return bp
