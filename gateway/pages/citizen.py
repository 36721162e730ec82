"""``/me/``: the citizen's page: who checked what about me, and my consents.

Behind a citizen token pasted or posted to ``/me/login`` (field ``token``): an ID token
of the configured OpenID Connect provider, or in the demo one ``tongban citizen-token``
minted. There is no redirect flow (authorization code, nonce) yet: whatever obtained the
ID token posts it here. A gateway with no citizen IdP answers the login 503
``citizen-login-not-configured``. The ID number is never rendered, only its masked form.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as WResponse

from tongban.audit.log import StoredEntry
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import NotFound, TongbanError
from tongban.primitives.idnumber import mask

from ..consent import ConsentStore
from ..models import ConsentGrant
from ..oauth import Citizen
from ..oauth.errors import CitizenLoginNotConfigured
from ..services import Gateway
from .session import (
    CITIZEN_LOGIN_UNAVAILABLE,
    LoginFailed,
    check_csrf,
    citizen_login_configured,
    citizen_login_demo,
    csrf_token,
    current_page_citizen,
    end_session,
)
from .session import citizen_login as accept_citizen_token

__all__ = [
    "access_item",
    "install_citizen",
]

P = ParamSpec("P")
R = TypeVar("R")

ACCESS_KINDS = ("check", "officer_lookup")
NOT_CONFIGURED = "citizen login: this gateway trusts no citizen identity provider"
ACCESS_PAGE = 100

RESULT_TEXT = {
    "yes": "Answered yes 回答“是”",
    "no": "Answered no 回答“否”",
    "undetermined": "Could not be determined 无法确定",
    "denied": "Refused — no data was looked at 已拒绝, 未查询任何数据",
}


def access_item(stored: StoredEntry, names: Callable[[str], str]) -> dict[str, Any]:
    e = stored.entry
    requester = str(e.get("requester", ""))
    item: dict[str, Any] = {
        "index": stored.index,
        "time": e.get("time", ""),
        "requester": requester,
        "requester_name": names(requester),
        "kind": e.get("kind"),
    }
    if e.get("kind") == "officer_lookup":
        item["what"] = "Privacy officer looked up your records 个人信息保护负责人查阅了您的记录"
        item["why"] = "Audit review 审计复核"
        item["result"] = ""
        return item
    item["what"] = str(e.get("claim", ""))
    why = str(e.get("purpose", ""))
    if e.get("legal_basis"):
        why += f" — legal basis 法律依据: {e['legal_basis']}"
    elif e.get("consent_id"):
        why += f" — your consent 您的同意: {e['consent_id']}"
    item["why"] = why
    result = str(e.get("result", ""))
    item["result"] = result
    item["result_text"] = RESULT_TEXT.get(result, result)
    if isinstance(e.get("error"), str):
        item["reason"] = e["error"]
    return item


def _consent_body(form: Any) -> dict[str, Any]:
    def listed(name: str) -> list[str]:
        values = [v.strip() for v in form.getlist(name) if v.strip()]
        return sorted({p.strip() for v in values for p in v.split(",") if p.strip()})

    body: dict[str, Any] = {
        "requester": form.get("requester", "").strip(),
        "purposes": listed("purposes"),
        "claims": listed("claims"),
    }
    days = form.get("valid_days", "").strip()
    if not (days.isascii() and days.isdigit()) or not 1 <= int(days) <= 366:
        raise ValueError("valid for: expected 1 to 366 days 有效期应为 1 至 366 天")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=int(days))
    body["expires_at"] = expires.isoformat(timespec="seconds").replace("+00:00", "Z")
    uses = form.get("max_uses", "").strip()
    if not (uses.isascii() and uses.isdigit()):
        raise ValueError("uses: expected a whole number 使用次数应为整数")
    body["max_uses"] = int(uses)
    return body


#: What the citizen page may say after a redirect: a key from the URL picks one of these, and
#: nothing else from the URL is shown (``/me/?error=<any text>`` once showed that text).
MESSAGES = {
    "granted": "Consent granted 已授权",
    "revoked": "Consent revoked 已撤销",
}
ERRORS = {
    "invalid-form": "Please check the form: a field is missing or out of range 请检查表单",
    "bad-request": "Please check the form: a field is missing or out of range 请检查表单",
    "consent-not-found": "No such consent 没有该授权",
    "consent-not-active": "That consent is no longer active 该授权已失效",
    "not-a-guardian": "You are not a guardian on record of that person 您不是其登记监护人",
    "guardian-undetermined": "Guardianship could not be confirmed 无法确认监护关系",
    "unknown-requester": "Unknown requester 未知的请求方",
    "subject-not-a-minor": "That person is not a minor 该人不是未成年人",
    "invalid-id-number": "That is not a valid ID number 身份证号无效",
    "unknown-claim": "Unknown question 未知的问题",
    "unknown-purpose": "Unknown purpose 未知的用途",
    "claim-not-for-purpose": "That question does not serve that purpose 问题与用途不符",
    "not-found": "Not found 未找到",
    "audit-failed": "Nothing was changed: please try again 未作更改; 请重试",
}
_GENERIC_ERROR = "That did not work; nothing was changed 操作未成功; 未作任何更改"
_CONSENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _notice(table: dict[str, str], key: str | None, consent_id: str | None = None) -> str | None:
    """The fixed text for ``key`` (a generic one for an unknown key), with the consent id
    when it looks like one; None without a key."""
    if not key:
        return None
    if table is ERRORS:
        return ERRORS.get(key, _GENERIC_ERROR)
    text = table.get(key)
    if text is None:
        return None
    if consent_id and _CONSENT_ID.fullmatch(consent_id):
        text = f"{text}: {consent_id}"
    return text


def install_citizen(bp: Blueprint, gateway: Gateway) -> None:
    consents: ConsentStore | None = gateway.consents
    audit = gateway.audit

    def store() -> ConsentStore:
        if consents is None:
            raise NotFound("this gateway keeps no consents")
        return consents

    def citizen_required(view: Callable[P, R]) -> Callable[P, R | WResponse]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | WResponse:
            citizen = current_page_citizen()
            if citizen is None:
                return redirect(url_for("pages.citizen_login"))
            g.page_citizen = citizen
            return view(*args, **kwargs)

        return wrapper

    def me() -> Citizen:
        citizen: Citizen = g.page_citizen
        return citizen

    def names(client_id: str) -> str:
        client = store().registry.get(client_id) if consents is not None else None
        return client.display_name if client is not None else client_id

    def unavailable(exc: TongbanError) -> tuple[str, int, dict[str, str]]:
        """The login form with why no token can be checked now (the problem's fixed
        detail, never the token), under the problem's status."""
        page = render_template(
            "citizen_login.html", csrf=csrf_token(), demo=citizen_login_demo(), error=exc.detail
        )
        return page, exc.status, exc.response_headers()

    @bp.get("/me/login")
    def citizen_login_form() -> str | tuple[str, int, dict[str, str]]:
        if not citizen_login_configured():
            return unavailable(CitizenLoginNotConfigured(NOT_CONFIGURED))
        return render_template(
            "citizen_login.html", csrf=csrf_token(), demo=citizen_login_demo(), error=None
        )

    @bp.post("/me/login")
    def citizen_login() -> WResponse | tuple[str, int] | tuple[str, int, dict[str, str]]:
        check_csrf(request.form.get("csrf"))
        try:
            accept_citizen_token(request.form.get("token", ""))
        except LoginFailed as exc:
            return render_template(
                "citizen_login.html", csrf=csrf_token(), demo=citizen_login_demo(), error=str(exc)
            ), 401
        except CITIZEN_LOGIN_UNAVAILABLE as exc:
            return unavailable(exc)
        return redirect(url_for("pages.citizen_home"))

    @bp.post("/me/logout")
    def citizen_logout() -> WResponse:
        check_csrf(request.form.get("csrf"))
        end_session()
        return redirect(url_for("pages.citizen_login"))

    @bp.get("/me/")
    @citizen_required
    def citizen_home() -> str:
        number = me().id_number
        access: list[StoredEntry] = []
        if audit is not None:
            pseudonym = audit.pseudonyms.pseudonym(number)
            for kind in ACCESS_KINDS:
                found, _ = audit.entries({"kind": kind, "subject": pseudonym}, limit=ACCESS_PAGE)
                access += found
        access.sort(key=lambda s: s.index, reverse=True)
        catalog = gateway.catalog
        return render_template(
            "citizen.html",
            csrf=csrf_token(),
            masked=mask(number),
            access=[access_item(s, names) for s in access[:ACCESS_PAGE]],
            consents=[c.to_json() for c in store().list_for(number)],
            claims=sorted(catalog.claims.values(), key=lambda c: c.name),
            purposes=sorted(catalog.purposes.values(), key=lambda p: p.name),
            message=_notice(MESSAGES, request.args.get("message"), request.args.get("id")),
            error=_notice(ERRORS, request.args.get("error")),
        )

    @bp.post("/me/consents")
    @citizen_required
    def citizen_grant() -> WResponse:
        check_csrf(request.form.get("csrf"))
        try:
            body = parse_body(ConsentGrant, _consent_body(request.form))
            consent = store().grant(me().id_number, body)
        except (TongbanError, ValueError) as exc:
            key = exc.slug if isinstance(exc, TongbanError) else "invalid-form"
            return redirect(url_for("pages.citizen_home", error=key))
        return redirect(url_for("pages.citizen_home", message="granted", id=consent.id))

    @bp.post("/me/consents/<consent_id>/revoke")
    @citizen_required
    def citizen_revoke(consent_id: str) -> WResponse:
        check_csrf(request.form.get("csrf"))
        try:
            store().revoke(consent_id, me().id_number)
        except TongbanError as exc:
            return redirect(url_for("pages.citizen_home", error=exc.slug))
        return redirect(url_for("pages.citizen_home", message="revoked", id=consent_id))
