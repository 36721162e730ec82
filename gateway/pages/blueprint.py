"""The pages: their own small Flask app, mounted in front of the gateway's API app.

Why a separate app rather than a blueprint on the API: the pages keep sessions (a random id
in a cookie, the rest in the gateway database: :mod:`.store`), CSRF tokens and a
Content-Security-Policy, none of which the stateless, bearer-token API should carry; and
the API's route table stays exactly the documented OpenAPI surface. Both apps share the
gateway core and the OAuth state (token verifier, citizen verifier, the token endpoint the
officer login exchanges credentials at).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response

from tongban.exposure import install_hsts, install_security_headers
from tongban.http_shell import install_problem_handlers

from ..oauth.flask import EXTENSION
from ..services import Gateway
from .citizen import install_citizen
from .officer import install_officer
from .session import API_APP, install_sessions, session_secret
from .store import PageSessionStore

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PREFIXES", "mount_pages", "pages_blueprint"]

PREFIXES = ("/officer", "/me", "/pages")
MAX_BODY = 64 * 1024
log = logging.getLogger("tongban.pages")


def pages_blueprint(gateway: Gateway) -> Blueprint:
    bp = Blueprint(
        "pages",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/pages/static",
    )
    install_officer(bp, gateway)
    install_citizen(bp, gateway)

    @bp.after_request
    def _headers(resp: Response) -> Response:
        # Pages show personal data (masked) and audit records: never cache them.
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'",
        )
        return resp

    return bp


class _PathDispatch:
    """Send ``/officer…``, ``/me…`` and ``/pages…`` to the pages app, the rest to the API
    (paths unchanged: ``/metrics`` is not ``/me``)."""

    def __init__(self, api: WSGIApplication, pages: WSGIApplication) -> None:
        self.api = api
        self.pages = pages

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix in PREFIXES:
            if path == prefix or path.startswith(prefix + "/"):
                return self.pages(environ, start_response)
        return self.api(environ, start_response)


def mount_pages(app: Flask, gateway: Gateway) -> Flask:
    """Build the pages app and mount it in front of ``app`` (after ``init_oauth``)."""
    pages = Flask("tongban.pages", static_folder=None)
    pages.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    install_problem_handlers(pages, MAX_BODY, log)
    store = gateway.page_sessions or PageSessionStore.in_memory()
    install_sessions(pages, store, session_secret(gateway))
    install_hsts(pages)
    install_security_headers(pages)
    oauth = gateway.oauth
    pages.config["TONGBAN_COOKIE_SECURE"] = oauth is not None and str(
        oauth.issuer.issuer
    ).startswith("https://")
    if EXTENSION in app.extensions:
        pages.extensions[EXTENSION] = app.extensions[EXTENSION]
    pages.extensions[API_APP] = app
    pages.register_blueprint(pages_blueprint(gateway))
    app.wsgi_app = _PathDispatch(app.wsgi_app, pages)  # type: ignore[method-assign]
    return pages
