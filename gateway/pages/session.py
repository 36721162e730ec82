"""Page sessions: who is logged in, and CSRF tokens for the forms that change things.

The officer logs in with their OAuth client id and secret: the page asks the gateway's
own ``/oauth/token`` endpoint (``client_secret_basic``, scope ``audit:read``) and keeps
the short-lived access token in the session cookie (signed, ``HttpOnly``,
``SameSite=Strict``). The citizen page takes a citizen token as the demo identity
provider mints it (``tongban citizen-token``): a DEMO-ONLY stand-in for a real IdP login.
Every request re-verifies the stored token, so an expired or revoked one logs out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from flask import Flask, current_app, session

from tongban.primitives.errors import Forbidden, TongbanError

from ..oauth import Citizen, Principal, require_scope
from ..oauth.flask import EXTENSION, OAuthState
from ..services import Gateway

__all__ = [
    "API_APP",
    "CsrfFailed",
    "LoginFailed",
    "check_csrf",
    "citizen_login",
    "csrf_token",
    "current_page_citizen",
    "current_page_officer",
    "officer_login",
    "session_secret",
]

OFFICER_SCOPE = "audit:read"
API_APP = "tongban.pages.api"  # the pages app's extension key for the gateway's API app


class CsrfFailed(Forbidden):
    slug = "csrf-failed"
    title = "The form's CSRF token is missing or wrong"


class LoginFailed(Exception):
    """The credentials or token were not accepted (the message is safe to show)."""


def session_secret(gateway: Gateway) -> bytes:
    """The session signing key, derived from the gateway's key ring (stable across workers
    and restarts); a gateway without a signing key gets a per-process random one."""
    if gateway.signing_key is None:
        return secrets.token_bytes(32)
    key = bytes.fromhex(gateway.signing_key.to_hex())
    return hmac.new(key, b"tongban pages session key v1", hashlib.sha256).digest()


def _state() -> OAuthState:
    state: OAuthState = current_app.extensions[EXTENSION]
    return state


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf(form_value: str | None) -> None:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not form_value:
        raise CsrfFailed("csrf: missing")
    if not hmac.compare_digest(expected.encode(), form_value.encode()):
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
    session.clear()
    session["officer"] = token
    csrf_token()
    return principal


def _verify_officer(token: str) -> Principal:
    principal = _state().verifier.verify(token)
    require_scope(principal, OFFICER_SCOPE)
    return principal


def current_page_officer() -> Principal | None:
    token = session.get("officer")
    if not isinstance(token, str):
        return None
    try:
        return _verify_officer(token)
    except TongbanError:
        session.pop("officer", None)  # expired (tokens live minutes) or revoked: log in again
        return None


def _verify_citizen(token: str) -> Citizen:
    verifier = _state().citizen_verifier
    if verifier is None:
        raise LoginFailed("this gateway accepts no citizen tokens")
    return verifier.verify(token)


def citizen_login(token: str) -> Citizen:
    token = token.strip()
    if not token:
        raise LoginFailed("a citizen token is required")
    try:
        citizen = _verify_citizen(token)
    except TongbanError as exc:
        raise LoginFailed(f"the citizen token was not accepted ({exc.slug})") from None
    session.clear()
    session["citizen"] = token
    csrf_token()
    return citizen


def current_page_citizen() -> Citizen | None:
    token = session.get("citizen")
    if not isinstance(token, str):
        return None
    try:
        return _verify_citizen(token)
    except (TongbanError, LoginFailed):
        session.pop("citizen", None)
        return None
