"""Flask glue: the token endpoint, bearer-protected views, RFC 6750 challenges.

The only module of :mod:`gateway.oauth` that imports Flask. The integrator calls
:func:`init_oauth` once on the gateway app (after ``install_problem_handlers``) and
decorates views with :func:`require_token` or :func:`require_citizen`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InsecureTransportError
from flask import Flask, Response, current_app, g, jsonify, request

from tongban.exposure import HSTS
from tongban.holds import hold_connection
from tongban.primitives.errors import RateLimited
from tongban.primitives.replay import ReplayCache

from .assertion import PrivateKeyJWT
from .citizen import Citizen, CitizenTokenVerifier
from .errors import CitizenLoginNotConfigured, InsecureTransport
from .registry import ClientRegistry
from .replay import SqlReplayCache
from .server import configure_server
from .throttle import TokenThrottle, claimed_client_id, client_budget_exhausted, source_of
from .tokens import AccessTokenVerifier, Principal, TokenIssuer, require_scope

__all__ = [
    "EXTENSION",
    "OAuthState",
    "current_citizen",
    "current_principal",
    "init_oauth",
    "require_citizen",
    "require_token",
]

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

EXTENSION = "tongban.oauth"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class OAuthState:
    """What :func:`init_oauth` put in ``app.extensions[EXTENSION]``."""

    server: Any  # authlib AuthorizationServer (untyped)
    verifier: AccessTokenVerifier
    citizen_verifier: CitizenTokenVerifier | None
    throttle: TokenThrottle | None = None


class _NoIssuedTokens(logging.Filter):
    """Authlib logs every issued token at DEBUG ("Issue token {...}"): a bearer credential
    in a log line. Drop those records; everything else Authlib logs passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Issue token"))


_TOKEN_LOGGER = "authlib.oauth2.rfc6749.grants.client_credentials"  # noqa: S105


def _discard(token: dict[str, Any], request: Any) -> None:
    """Authlib's ``save_token``: JWT access tokens are self-contained; nothing to store."""


def init_oauth(
    app: Flask,
    registry: ClientRegistry,
    token_issuer: TokenIssuer,
    *,
    token_endpoint: str,
    replay_cache: ReplayCache | None = None,
    verifier: AccessTokenVerifier | None = None,
    citizen_verifier: CitizenTokenVerifier | None = None,
    token_throttle: TokenThrottle | None = None,
    path: str = "/oauth/token",
) -> OAuthState:
    """Register ``POST {path}`` and the bearer error handlers on ``app``.

    ``token_endpoint`` is the endpoint's public URL, the ``aud`` client assertions must
    name; it is configured, never taken from the request's Host header, which a client
    controls. The replay cache defaults to the registry's database (shared by workers);
    the verifier defaults to one matching ``token_issuer`` that also refuses tokens of
    clients disabled since issue. The token throttle defaults to
    :meth:`TokenThrottle.on_engine` on the registry's database (shared by workers).
    Tables must exist (``registry.create_schema()``).
    """
    cache = replay_cache if replay_cache is not None else SqlReplayCache(registry.engine)
    token_log = logging.getLogger(_TOKEN_LOGGER)
    if not any(isinstance(f, _NoIssuedTokens) for f in token_log.filters):
        token_log.addFilter(_NoIssuedTokens())
    server = AuthorizationServer(query_client=registry.query_client, save_token=_discard)
    server.init_app(app)
    configure_server(
        server,
        token_issuer,
        PrivateKeyJWT(token_endpoint, cache),
        check_secret=registry.check_secret,
    )
    if verifier is None:
        verifier = token_issuer.verifier(client_active=registry.is_enabled)
    if token_throttle is None:
        token_throttle = TokenThrottle.on_engine(registry.engine)

    def token() -> Response:
        throttle = _state().throttle
        if throttle is None:
            return _token_response(server)
        authorization = request.headers.get("Authorization")
        try:
            throttle.admit_source(source_of(request.remote_addr))
        except RateLimited as exc:
            return _throttled(exc)
        over = throttle.take_client(claimed_client_id(authorization, request.form))
        if over is None:
            return _token_response(server)
        # Past the client id's budget only cheap checks run (an hmac-sm3 row, a signature;
        # never a scrypt): the right credentials still get a token, and a failure is the
        # 429 an unknown client id gets, unless the client proved its key first (a
        # replayed or expired assertion: its holder may learn why).
        with client_budget_exhausted() as proven:
            resp = _token_response(server)
        return _throttled(over) if _is_invalid_client(resp) and not proven else resp

    app.add_url_rule(path, endpoint="oauth_token", view_func=token, methods=["POST"])
    state = OAuthState(server, verifier, citizen_verifier, token_throttle)
    app.extensions[EXTENSION] = state
    app.wsgi_app = _RefusedFastPath(app, path)  # type: ignore[method-assign]
    return state


class _RefusedFastPath:
    """WSGI in front of Flask: a token request from an address whose bucket this process
    already knows to be empty (:meth:`TokenThrottle.refused_locally`) is answered 429 here,
    for a few microseconds, without a request context, form parsing or any hook. A flood
    past its budget is answered as fast as it arrives, so it would otherwise cost the
    worker ~1 ms of Python per request and crowd out the checks. Everything else (and
    the first refusal, which has to ask the shared store) goes through the view."""

    def __init__(self, app: Flask, path: str) -> None:
        self.app = app
        self.inner = app.wsgi_app
        self.path = path

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if environ.get("PATH_INFO") == self.path and environ.get("REQUEST_METHOD") == "POST":
            throttle = self.app.extensions[EXTENSION].throttle
            if throttle is not None:
                refused = throttle.refused_locally(source_of(environ.get("REMOTE_ADDR")))
                if refused is not None:
                    body = json.dumps(_throttled_body(refused)).encode()
                    headers = [("Content-Type", "application/json"),
                               ("Content-Length", str(len(body))), *_THROTTLED_HEADERS,
                               ("Retry-After", str(refused.retry_after))]  # fmt: skip
                    if environ.get("wsgi.url_scheme") == "https":
                        headers.append(("Strict-Transport-Security", HSTS))
                    start_response("429 Too Many Requests", headers)
                    hold_connection(refused.retry_after, environ.get("REMOTE_ADDR"))
                    return [body]
        return self.inner(environ, start_response)


_THROTTLED_HEADERS = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def _throttled_body(exc: RateLimited) -> dict[str, Any]:
    return {
        "error": "temporarily_unavailable",
        "error_description": exc.detail,
        "type": exc.type,
        "limit": exc.limit,
        "retry_after": exc.retry_after,
    }


def _is_invalid_client(resp: Response) -> bool:
    if resp.status_code not in (400, 401):
        return False
    body = resp.get_json(silent=True)
    return isinstance(body, dict) and body.get("error") == "invalid_client"


def _throttled(exc: RateLimited) -> Response:
    """A throttled token request, in the endpoint's RFC 6749 section 5.2 shape: 429,
    ``Retry-After``, ``error`` ``temporarily_unavailable`` (the RFC's code for an
    overloaded server; OAuth client libraries know it), and the tongban problem ``type``
    with the bucket that ran dry (``client`` or ``source``), as for a refused assertion."""
    resp = jsonify(_throttled_body(exc))
    resp.status_code = exc.status
    resp.headers.update(exc.response_headers())
    resp.headers.update(_THROTTLED_HEADERS)
    # The flooder's connection waits, not a thread (and, refused by address, its new ones).
    hold_connection(exc.retry_after, request.remote_addr if exc.limit == "source" else None)
    return resp


def _token_response(server: Any) -> Response:
    """Authlib's token response, with the one exception it raises before its own error
    handling (a request that looks like plain HTTP to a non-loopback host, e.g. a spoofed
    ``Host``) as the :class:`InsecureTransport` problem rather than a 500."""
    try:
        response: Response = server.create_token_response()
    except InsecureTransportError:
        raise InsecureTransport(
            "transport: the token endpoint takes HTTPS requests only (or loopback HTTP); "
            "this one names another host over plain HTTP"
        ) from None
    return response


def _state() -> OAuthState:
    state: OAuthState = current_app.extensions[EXTENSION]
    return state


def require_token(*scopes: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a view: authenticate the requester's access token, demand ``scopes``, and
    make the principal available as :func:`current_principal`."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            principal = _state().verifier.authenticate_request(request.headers.get("Authorization"))
            require_scope(principal, *scopes)
            g.oauth_principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorate


def current_principal() -> Principal:
    """The principal of a :func:`require_token` view (RuntimeError outside one)."""
    principal: Principal | None = g.get("oauth_principal")
    if principal is None:
        raise RuntimeError("current_principal() outside a @require_token view")
    return principal


def require_citizen(view: Callable[P, R]) -> Callable[P, R]:
    """Decorate a citizen view: verify the IdP-signed citizen token (see
    :func:`current_citizen`). Without a ``citizen_verifier`` in :func:`init_oauth` (no
    citizen identity provider is configured) every request is refused with
    :class:`CitizenLoginNotConfigured` (503): the route stays, as documented."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        citizen_verifier = _state().citizen_verifier
        if citizen_verifier is None:
            raise CitizenLoginNotConfigured(
                "citizen login: this gateway trusts no citizen identity provider"
            )
        g.oauth_citizen = citizen_verifier.verify_citizen_token(
            request.headers.get("Authorization")
        )
        return view(*args, **kwargs)

    return wrapper


def current_citizen() -> Citizen:
    """The citizen of a :func:`require_citizen` view (RuntimeError outside one)."""
    citizen: Citizen | None = g.get("oauth_citizen")
    if citizen is None:
        raise RuntimeError("current_citizen() outside a @require_citizen view")
    return citizen
