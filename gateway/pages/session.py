"""Page sessions: who is logged in, and CSRF tokens for the forms that change things.

The browser's cookie ``tongban_pages`` holds a random session id and nothing else
(``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS); what the session knows lives in
the gateway database, sealed under a key only that id opens (:mod:`.store`). Logout deletes
the row, so the old cookie names nothing afterwards.

The officer logs in with their OAuth client id and secret: the page asks the gateway's
own ``/oauth/token`` endpoint (``client_secret_basic``, scope ``audit:read``) and keeps the
short-lived access token in the session. The citizen page takes a token of the gateway's
citizen identity provider, pasted or posted to ``/me/login``: an OpenID Connect ID token
where one is configured, else (the demo only) one the demo IdP mints (``tongban
citizen-token``). Every request re-verifies the stored token, so an expired or revoked one
logs out; an IdP whose keys cannot be fetched does not (its 503 is answered instead).

A visitor who is not logged in gets an id too, stored nowhere: the CSRF token of the login
forms is ``HMAC-SM3(pages key, id)``, so an anonymous page view writes no row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request

from tongban.primitives.errors import Forbidden, TongbanError
from tongban.primitives.gm import hmac_sm3

from ..oauth import Citizen, Principal, require_scope
from ..oauth.errors import CitizenLoginNotConfigured, IdentityProviderUnavailable
from ..oauth.flask import EXTENSION, OAuthState
from ..services import Gateway
from .store import PageSessionStore, new_session_id, valid_session_id

__all__ = [
    "API_APP",
    "CITIZEN_LOGIN_UNAVAILABLE",
    "COOKIE",
    "SESSIONS",
    "CsrfFailed",
    "LoginFailed",
    "check_csrf",
    "citizen_login",
    "citizen_login_configured",
    "citizen_login_demo",
    "csrf_token",
    "current_page_citizen",
    "current_page_officer",
    "end_session",
    "install_sessions",
    "officer_login",
    "session_secret",
]

OFFICER_SCOPE = "audit:read"
API_APP = "tongban.pages.api"  # the pages app's extension key for the gateway's API app
SESSIONS = "tongban.pages.sessions"  # the pages app's extension key for the store
_CSRF_KEY = "tongban.pages.csrf-key"
COOKIE = "tongban_pages"


class CsrfFailed(Forbidden):
    slug = "csrf-failed"
    title = "The form's CSRF token is missing or wrong"


class LoginFailed(Exception):
    """The credentials or token were not accepted (the message is safe to show)."""


def session_secret(gateway: Gateway) -> bytes:
    """The pages' CSRF key, derived from the gateway's key ring (stable across workers
    and restarts); a gateway without a signing key gets a per-process random one."""
    if gateway.signing_key is None:
        return secrets.token_bytes(32)
    key = bytes.fromhex(gateway.signing_key.to_hex())
    return hmac.new(key, b"tongban pages session key v1", hashlib.sha256).digest()


def install_sessions(app: Flask, store: PageSessionStore, secret: bytes) -> None:
    """Load the session named by the cookie before each page request, and set the cookie
    after it whenever the id changed (a first visit, a login, a logout)."""
    app.extensions[SESSIONS] = store
    app.extensions[_CSRF_KEY] = secret

    @app.before_request
    def _load() -> None:
        if request.endpoint == "pages.static":
            return
        sid = request.cookies.get(COOKIE)
        if sid is not None and valid_session_id(sid):
            g.page_sid, g.page_data = sid, _store().load(sid)
        else:  # a first visit, or a cookie that is no id of ours: a fresh one
            g.page_sid, g.page_data, g.page_set_cookie = new_session_id(), None, True

    @app.after_request
    def _cookie(resp: Response) -> Response:
        if g.get("page_set_cookie"):
            resp.set_cookie(
                COOKIE,
                g.page_sid,
                httponly=True,
                samesite="Strict",
                secure=_secure(app),
                path="/",
            )
        return resp


def _secure(app: Flask) -> bool:
    """``Secure`` whenever the request came over TLS (the gateway serving HTTPS itself, or
    a terminator that says so), and always when the public URL is ``https://``."""
    return bool(app.config.get("TONGBAN_COOKIE_SECURE")) or (
        has_request_context() and request.is_secure
    )


def _store() -> PageSessionStore:
    store: PageSessionStore = current_app.extensions[SESSIONS]
    return store


def _data() -> dict[str, Any]:
    data = g.get("page_data")
    return data if isinstance(data, dict) else {}


def _start(data: dict[str, Any]) -> None:
    """A new session (a new id: no fixation); the one the cookie named, if any, ends."""
    if g.get("page_data") is not None:
        _store().delete(g.page_sid)
    g.page_sid = _store().create(data)
    g.page_data, g.page_set_cookie = data, True


def end_session() -> None:
    """Logout, or a token that no longer verifies: the row goes, the cookie gets a new id."""
    sid = g.get("page_sid")
    if isinstance(sid, str) and g.get("page_data") is not None:
        _store().delete(sid)
    g.page_sid, g.page_data, g.page_set_cookie = new_session_id(), None, True


def _state() -> OAuthState:
    state: OAuthState = current_app.extensions[EXTENSION]
    return state


def csrf_token() -> str:
    sid = g.get("page_sid") or ""
    mac = hmac_sm3(current_app.extensions[_CSRF_KEY], b"csrf\x00" + str(sid).encode())
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def check_csrf(form_value: str | None) -> None:
    if not form_value or not g.get("page_sid"):
        raise CsrfFailed("csrf: missing")
    if not hmac.compare_digest(csrf_token().encode(), form_value.encode()):
        raise CsrfFailed("csrf: does not match this session")


def officer_login(client_id: str, client_secret: str) -> Principal:
    """Exchange the officer's client credentials at the gateway's own token endpoint and
    keep the access token in the session."""
    if not client_id or not client_secret:
        raise LoginFailed("client id and secret are required")
    basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    api: Flask = current_app.extensions[API_APP]
    view = api.view_functions.get("oauth_token")
    if view is None:
        raise LoginFailed("this gateway has no token endpoint")
    # The API app's token endpoint itself, in-process: the same client authentication,
    # scope checks and token issue as any requester gets over HTTP.
    with api.test_request_context(
        "/oauth/token",
        method="POST",
        data={"grant_type": "client_credentials", "scope": OFFICER_SCOPE},
        headers={"Authorization": f"Basic {basic}"},
    ):
        resp = api.make_response(view())  # type: ignore[arg-type]
    body: Any = resp.get_json(silent=True)
    if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        raise LoginFailed("the gateway did not accept these credentials for audit:read")
    token = str(body["access_token"])
    principal = _verify_officer(token)
    _start({"officer": token})
    return principal


def _verify_officer(token: str) -> Principal:
    principal = _state().verifier.verify(token)
    require_scope(principal, OFFICER_SCOPE)
    return principal


def current_page_officer() -> Principal | None:
    token = _data().get("officer")
    if not isinstance(token, str):
        return None
    try:
        return _verify_officer(token)
    except TongbanError:
        end_session()  # expired (tokens live minutes) or revoked: log in again
        return None


#: Refusals that say nothing about the citizen's token: the gateway cannot check one now.
CITIZEN_LOGIN_UNAVAILABLE = (CitizenLoginNotConfigured, IdentityProviderUnavailable)


def citizen_login_configured() -> bool:
    """Whether this gateway trusts a citizen identity provider at all."""
    state: OAuthState | None = current_app.extensions.get(EXTENSION)
    return state is not None and state.citizen_verifier is not None


def citizen_login_demo() -> bool:
    """Whether the identity provider trusted is the demo's (the login page says so)."""
    state: OAuthState | None = current_app.extensions.get(EXTENSION)
    verifier = state.citizen_verifier if state is not None else None
    return verifier is not None and verifier.demo


def _verify_citizen(token: str) -> Citizen:
    verifier = _state().citizen_verifier
    if verifier is None:
        raise CitizenLoginNotConfigured(
            "citizen login: this gateway trusts no citizen identity provider"
        )
    return verifier.verify(token)


def citizen_login(token: str) -> Citizen:
    """Start a citizen session with ``token``. LoginFailed (safe to show) for a token that
    is refused; the :data:`CITIZEN_LOGIN_UNAVAILABLE` errors (503) propagate."""
    token = token.strip()
    if not token:
        raise LoginFailed("a citizen token is required")
    try:
        citizen = _verify_citizen(token)
    except CITIZEN_LOGIN_UNAVAILABLE:
        raise
    except TongbanError as exc:
        raise LoginFailed(f"the citizen token was not accepted ({exc.slug})") from None
    _start({"citizen": token})
    return citizen


def current_page_citizen() -> Citizen | None:
    """The session's citizen; None (and the session ended) if its token no longer
    verifies. An IdP that cannot be asked now raises its 503 and keeps the session."""
    token = _data().get("citizen")
    if not isinstance(token, str):
        return None
    try:
        return _verify_citizen(token)
    except CITIZEN_LOGIN_UNAVAILABLE:
        raise
    except (TongbanError, LoginFailed):
        end_session()
        return None
