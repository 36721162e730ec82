"""``/officer/``: the privacy officer's audit review. Thin: parse the query, read the
log, render. Subjects appear only masked (``110105********002X``), revealed through
the pseudonym vault; looking one citizen up by ID number is itself an audited access."""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import functools
import io
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as WResponse

from tongban.audit.canonical import canonical_bytes
from tongban.audit.log import AuditLog, StoredEntry
from tongban.audit.note import SignedNote
from tongban.primitives.errors import NotFound, TongbanError
from tongban.primitives.idnumber import mask

from ..anomaly import Flag, Thresholds, detect, iso
from ..checkpoints import default_quorum
from ..oauth import Principal
from ..services import AuditEvents, Gateway
from .charts import bucketed, stacked_bars
from .session import LoginFailed, check_csrf, csrf_token, current_page_officer, end_session
from .session import officer_login as exchange_credentials

__all__ = [
    "Masker",
    "checkpoint_view",
    "flag_view",
    "install_officer",
    "parse_filters",
    "parse_thresholds",
    "row",
    "scan",
]

P = ParamSpec("P")
R = TypeVar("R")

PAGE = 25
CHART_SCAN = 2000  # entries behind the charts (the newest, under the current filters)
ANOMALY_SCAN = 5000  # newest check entries the anomaly rules look at
CSV_MAX = 10_000
_TEXT_FILTERS = ("requester", "claim", "purpose", "decision", "result")
_THRESHOLD_FIELDS = {f.name: f.type for f in dataclasses.fields(Thresholds)}
_CSV_COLUMNS = ("index", "time", "kind", "requester", "claim", "purpose", "basis", "decision",
                "rule", "reason", "result", "subject")  # fmt: skip


def _when(raw: str) -> str:
    t = dt.datetime.fromisoformat(raw.strip())
    return iso(t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC))


def parse_filters(args: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The log filters of a query string, and messages for the ones that were ignored."""
    filters = {k: args[k].strip()[:64] for k in _TEXT_FILTERS if args.get(k, "").strip()}
    errors: list[str] = []
    kind = args.get("kind", "check")
    if kind and kind != "all":
        filters["kind"] = kind[:64]
    for name in ("since", "until"):
        if args.get(name, "").strip():
            try:
                filters[name] = _when(args[name])
            except ValueError:
                errors.append(f"{name}: expected an ISO 8601 time such as 2026-03-04T08:00Z")
    subject = args.get("subject", "").strip()
    if subject:
        filters["subject"] = subject[:128]
    return filters, errors


def parse_thresholds(args: Mapping[str, str]) -> tuple[Thresholds, list[str]]:
    given: dict[str, Any] = {}
    for name, kind in _THRESHOLD_FIELDS.items():
        raw = args.get(name, "").strip()
        if raw:
            try:
                given[name] = float(raw) if kind == "float" else int(raw)
            except ValueError:
                return Thresholds(), [f"{name}: expected a number; using the defaults"]
    try:
        return Thresholds(**given), []
    except ValueError as exc:
        return Thresholds(), [f"{exc}; using the defaults"]


def scan(log: AuditLog, filters: Mapping[str, str], cap: int) -> list[StoredEntry]:
    out: list[StoredEntry] = []
    cursor: int | None = None
    while len(out) < cap:
        rows, cursor = log.entries(filters, cursor=cursor, limit=min(500, cap - len(out)))
        out += rows
        if cursor is None:
            break
    return out


class Masker:
    """Pseudonym → masked ID number, through the vault, once per pseudonym."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._seen: dict[str, str] = {}

    def __call__(self, pseudonym: object) -> str:
        if not isinstance(pseudonym, str):
            return ""
        if pseudonym not in self._seen:
            number = self._log.reveal(pseudonym)
            self._seen[pseudonym] = "(erased 已删除)" if number is None else mask(number)
        return self._seen[pseudonym]


def row(stored: StoredEntry, masked: Masker) -> dict[str, Any]:
    e = stored.entry
    decision = e.get("decision")
    allowed = rule = reason = ""
    if isinstance(decision, Mapping):
        if isinstance(decision.get("allowed"), bool):
            allowed = "allow" if decision["allowed"] else "deny"
        rule = ", ".join(str(r) for r in decision.get("rule") or ())
        reason = str(decision.get("reason") or "")
    if e.get("legal_basis"):
        basis = f"legal basis: {e['legal_basis']}"
    elif e.get("consent_id"):
        basis = f"consent: {e['consent_id']}"
    else:
        basis = ""
    if isinstance(e.get("error"), str):
        reason = e["error"] if not reason else f"{reason}; {e['error']}"
    return {
        "index": stored.index,
        "time": e.get("time", ""),
        "kind": e.get("kind", ""),
        "requester": e.get("requester", ""),
        "claim": e.get("claim", ""),
        "purpose": e.get("purpose", ""),
        "basis": basis,
        "decision": allowed,
        "rule": rule,
        "reason": reason,
        "result": e.get("result", ""),
        "subject": masked(e.get("subject")),
        "pseudonym": e.get("subject") if isinstance(e.get("subject"), str) else "",
    }


def checkpoint_view(gateway: Gateway, note: SignedNote | None) -> dict[str, Any] | None:
    """The latest checkpoint and, for the gateway and each witness, verified or failed."""
    if note is None:
        return None
    cp = note.checkpoint
    keys = dict(gateway.witness_keys)
    signers = []
    if gateway.signing_key is not None:
        ok = note.verified_by({gateway.name: gateway.signing_key.public_key})[gateway.name]
        signers.append({"name": gateway.name, "role": "gateway 网关", "ok": ok})
    present = {s.name for s in note.signatures}
    for name, ok in sorted(note.verified_by(keys).items()):
        status = ok if name in present else None  # None: this witness has not cosigned
        signers.append({"name": name, "role": "witness 见证", "ok": status})
    known = {gateway.name, *keys}
    for s in note.signatures:
        if s.name not in known:
            signers.append({"name": s.name, "role": "unknown key 未知", "ok": False})
    # Below quorum: fewer witnesses than the quorum verifiably cosigned this checkpoint, so
    # it is the gateway's word alone and no evidence against a split view (finding 3).
    checkpointer = gateway.checkpointer
    quorum = checkpointer.quorum if checkpointer is not None else default_quorum(len(keys))
    cosigned = sum(1 for s in signers if str(s["role"]).startswith("witness") and s["ok"] is True)
    return {"size": cp.size, "root": base64.b64encode(cp.root).decode(), "origin": cp.origin,
            "signers": signers, "text": note.text(), "quorum": quorum, "cosigned": cosigned,
            "witnessed": not keys or cosigned >= quorum,
            "diverged": checkpointer.diverged if checkpointer is not None else None}  # fmt: skip


def _link(**params: str) -> str:
    return url_for("pages.officer_home") + "?" + urlencode({k: v for k, v in params.items() if v})


def flag_view(flag: Flag) -> dict[str, Any]:
    return {"kind": flag.kind, "requester": flag.requester, "since": flag.since,
            "until": flag.until, "count": flag.count, "detail": flag.detail,
            "href": _link(kind="check", **flag.filters)}  # fmt: skip


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting with these as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def install_officer(bp: Blueprint, gateway: Gateway) -> None:  # noqa: PLR0915 -- one view each
    audit = gateway.audit

    def log() -> AuditLog:
        if audit is None:
            raise NotFound("this gateway keeps no audit log")
        return audit

    def officer_required(view: Callable[P, R]) -> Callable[P, R | WResponse]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | WResponse:
            principal = current_page_officer()
            if principal is None:
                if request.path.startswith("/officer/api/"):
                    return Response('{"error": "login required"}', 401,
                                    mimetype="application/json")  # fmt: skip
                return redirect(url_for("pages.officer_login"))
            g.page_officer = principal
            return view(*args, **kwargs)

        return wrapper

    def me() -> Principal:
        principal: Principal = g.page_officer
        return principal

    @bp.get("/officer/login")
    def officer_login_form() -> str:
        return render_template("officer_login.html", csrf=csrf_token(), error=None)

    @bp.post("/officer/login")
    def officer_login() -> WResponse | tuple[str, int]:
        check_csrf(request.form.get("csrf"))
        try:
            exchange_credentials(request.form.get("client_id", ""), request.form.get("secret", ""))
        except LoginFailed as exc:
            return render_template("officer_login.html", csrf=csrf_token(), error=str(exc)), 401
        return redirect(url_for("pages.officer_home"))

    @bp.post("/officer/logout")
    def officer_logout() -> WResponse:
        check_csrf(request.form.get("csrf"))
        end_session()
        return redirect(url_for("pages.officer_login"))

    @bp.get("/officer/")
    @officer_required
    def officer_home() -> str:
        filters, errors = parse_filters(request.args)
        thresholds, th_errors = parse_thresholds(request.args)
        cursor_raw = request.args.get("cursor", "")
        cursor = int(cursor_raw) if cursor_raw.isascii() and cursor_raw.isdigit() else None
        masked = Masker(log())
        try:
            page, nxt = log().entries(filters, cursor=cursor, limit=PAGE)
            charted = [s.entry for s in scan(log(), filters, CHART_SCAN)]
        except ValueError as exc:
            errors.append(str(exc))
            page, nxt, charted = [], None, []
        recent = [s.entry for s in scan(log(), {"kind": "check"}, ANOMALY_SCAN)]
        flags = [flag_view(f) for f in detect(recent, thresholds)]
        outcomes = [{**e, "outcome": e.get("result", "?")} for e in charted]
        charts = [
            stacked_bars("Checks by requester 按请求方", *bucketed(charted, "requester")),
            stacked_bars("Checks by purpose 按用途", *bucketed(charted, "purpose")),
            stacked_bars("Outcomes: denials, undetermined 拒绝与无法确定",
                         *bucketed(outcomes, "outcome")),
        ]  # fmt: skip
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        return render_template(
            "officer.html",
            officer=me().client_id,
            csrf=csrf_token(),
            checkpoint=checkpoint_view(gateway, log().latest_checkpoint()),
            rows=[row(s, masked) for s in page],
            next_href=_link(**args, cursor=str(nxt)) if nxt is not None else None,
            first_href=_link(**args) if cursor is not None else None,
            export_href=url_for("pages.officer_export") + "?" + urlencode(args),
            args=request.args,
            kind=request.args.get("kind", "check"),
            thresholds=thresholds,
            flags=flags,
            charts=charts,
            errors=errors + th_errors,
            scanned=len(recent),
            lookup_error=request.args.get("lookup_error"),
        )

    @bp.post("/officer/lookup")
    @officer_required
    def officer_lookup_view() -> WResponse:
        check_csrf(request.form.get("csrf"))
        try:
            pseudonym = AuditEvents(log()).officer_lookup(
                me().client_id, request.form.get("id_number", "")
            )
        except TongbanError:
            # Never echo the number back: say only that it was not a valid one.
            return redirect(_link(lookup_error="1"))
        return redirect(_link(kind="all", subject=pseudonym))

    @bp.get("/officer/export.csv")
    @officer_required
    def officer_export() -> WResponse:
        filters, _ = parse_filters(request.args)
        masked = Masker(log())
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_COLUMNS)
        for stored in scan(log(), filters, CSV_MAX):
            r = row(stored, masked)
            writer.writerow([_csv_cell(r[c]) for c in _CSV_COLUMNS])
        resp = Response(out.getvalue(), 200, mimetype="text/csv")
        resp.headers["Content-Disposition"] = 'attachment; filename="tongban-audit.csv"'
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.get("/officer/api/proof/<int:index>")
    @officer_required
    def officer_proof(index: int) -> WResponse:
        """What the browser needs to check inclusion itself: the entry's canonical bytes,
        its audit path, and the signed checkpoint whose root it must reach."""
        note = log().latest_checkpoint()
        stored = log().get(index)
        if stored is None:
            raise NotFound("no such entry")
        if note is None or index >= note.checkpoint.size:
            return jsonify(index=index, status="pending",
                           detail="not yet covered by a signed checkpoint")  # fmt: skip
        size = note.checkpoint.size
        return jsonify(
            index=index,
            status="ready",
            tree_size=size,
            entry_b64=base64.b64encode(canonical_bytes(stored.entry)).decode(),
            leaf_hash=log().leaf(index).hex(),
            audit_path=[h.hex() for h in log().inclusion_proof(index, size)],
            checkpoint=note.text(),
        )
