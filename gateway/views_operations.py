"""The operator's and the client libraries' endpoints: health, liveness, readiness, the
keys and the authorization server's metadata; and the declarations of the two operations
registered elsewhere, the token endpoint (:func:`~gateway.oauth.flask.init_oauth`, where
Authlib reads the form) and ``/metrics`` (:mod:`tongban.http_metrics`, shared with the
adapters)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from tongban.primitives.errors import NotFound, PayloadTooLarge, StoreUnavailable
from tongban.primitives.jws import PublicKey, jwks
from tongban.primitives.metrics_auth import MetricsUnauthenticated

from .models import (
    AuthorizationServerMetadata,
    Health,
    Jwks,
    Liveness,
    OAuthError,
    Readiness,
    TokenRequest,
    TokenResponse,
)
from .oauth.errors import InsecureTransport
from .operations import Operation, Out
from .services import Gateway

__all__ = ["METRICS_MEDIA_TYPES", "OPERATIONS", "operations_blueprint"]

METRICS_MEDIA_TYPES = ("text/plain", "application/openmetrics-text")
_TEXT = {"type": "string"}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds until a request would be admitted.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
    }
}

TOKEN = Operation(
    "POST",
    "/oauth/token",
    "token",
    "oauth",
    "Issue an access token (client credentials)",
    (
        Out(TokenResponse, "An RFC 9068 JWT access token."),
        Out(
            OAuthError,
            "RFC 6749 error, e.g. `invalid_scope` (a scope this client may not "
            "request), `unsupported_grant_type`, or `invalid_client` for a refused client "
            "assertion (with `type`).",
            400,
        ),
        Out(
            OAuthError,
            "`invalid_client`: HTTP Basic credentials refused.",
            401,
            headers=_WWW_AUTHENTICATE,
        ),
        Out(
            OAuthError,
            "`temporarily_unavailable` with `type` `rate-limited`: too many token "
            "requests for this client id or from this address (`limit`), refused before any "
            "secret or assertion is checked (docs/security.md).",
            429,
            headers=_RETRY_AFTER,
        ),
    ),
    (InsecureTransport, PayloadTooLarge, StoreUnavailable),
    form=TokenRequest,
    security=[{"clientSecretBasic": []}, {}],
    description="OAuth 2.0 client credentials grant (RFC 6749 section 4.4). The client "
    "authenticates with `client_secret_basic` (HTTP Basic) or `private_key_jwt` (RFC 7523: "
    "`client_assertion_type` and `client_assertion` in the form; the empty security "
    "requirement stands for it), never both. Errors follow RFC 6749 section 5.2 "
    "(`application/json`), not problem+json, except `insecure-transport`: a request that by "
    "its own scheme and `Host` came over plain HTTP to a host that is not loopback.",
)
METADATA = Operation(
    "GET",
    "/.well-known/oauth-authorization-server",
    "authorizationServerMetadata",
    "oauth",
    "OAuth 2.0 authorization server metadata (RFC 8414)",
    (Out(AuthorizationServerMetadata, "Cacheable for an hour."),),
    (NotFound,),
    always_open=True,
    description="The token endpoint, the JWK Set, the grant, the client authentication "
    "methods and algorithms, and the scopes, for client libraries that discover them.",
)
JWKS = Operation(
    "GET",
    "/.well-known/jwks.json",
    "jwks",
    "oauth",
    "Public keys of answers, checkpoints, consents and access tokens",
    (Out(Jwks, "JWK Set; SM2 keys as `{kty: EC, crv: SM2}`. Cacheable for 5 minutes."),),
    always_open=True,
    description="Everything the gateway signs verifies with these keys alone, selected by `kid`.",
)
HEALTH = Operation(
    "GET",
    "/healthz",
    "health",
    "operations",
    "Liveness and department reachability",
    (
        Out(Health, "The gateway answers."),
        Out(
            Health,
            "As application/json with `status: unavailable`, not ready: the audit log "
            "is behind what a witness cosigned.",
            503,
        ),
    ),
    (StoreUnavailable,),
    always_open=True,
)
LIVEZ = Operation(
    "GET",
    "/livez",
    "livez",
    "operations",
    "Liveness: this process answers (asks nothing else)",
    (Out(Liveness, "Alive."),),
    always_open=True,
)
READYZ = Operation(
    "GET",
    "/readyz",
    "readyz",
    "operations",
    "Readiness: the stores answer and the audit log is not behind its witnesses",
    (Out(Readiness, "Ready for traffic."), Out(Readiness, "Not ready: `reasons` says why.", 503)),
    always_open=True,
)
METRICS = Operation(
    "GET",
    "/metrics",
    "metrics",
    "operations",
    "Prometheus metrics (text exposition format)",
    (
        Out(
            _TEXT,
            "Request counts and latency per route template, checks and department calls "
            "by outcome (never an answer, never a requester), audit appends and tree size. Labels "
            "never carry personal data. `text/plain; version=0.0.4` unless the scraper's Accept "
            "asks for OpenMetrics.",
            media=METRICS_MEDIA_TYPES,
        ),
    ),
    (MetricsUnauthenticated,),
    always_open=True,
    security=[{"metricsToken": []}],
)
OPERATIONS = (TOKEN, METADATA, JWKS, HEALTH, LIVEZ, READYZ, METRICS)


def operations_blueprint(gateway: Gateway) -> Blueprint:
    bp = Blueprint("operations", __name__)
    oauth = gateway.oauth

    @HEALTH.route(bp)
    def healthz() -> Response:
        # Liveness is "this process answers"; a department being down degrades answers to
        # `undetermined` but does not make the gateway unhealthy. Each department reports
        # its source's kind and whether that source can be read (`ready`) from its own
        # /healthz: an adapter up over an unreachable database degrades too.
        body = gateway.health()
        departments = body.get("departments")
        if body["status"] == "unavailable":
            # Not ready: the audit log is behind its witnesses (nothing is answered).
            resp = jsonify(body)
            resp.status_code = 503
            return resp
        if isinstance(departments, dict) and any(
            not r.get("ready", r.get("reachable")) for r in departments.values()
        ):
            body["status"] = "degraded"
        return jsonify(body)

    @LIVEZ.route(bp)
    def livez() -> Response:
        return jsonify(status="ok")  # this process answers: nothing else is asked

    @READYZ.route(bp)
    def readyz() -> tuple[Response, int]:
        body = gateway.readiness()
        return jsonify(body), 200 if body["status"] == "ready" else 503

    @METADATA.route(bp)
    def server_metadata() -> Response:
        if oauth is None:
            raise NotFound("this gateway issues no tokens")
        meta = AuthorizationServerMetadata.of(
            oauth.issuer.issuer, oauth.token_endpoint, oauth.registry.known_scopes
        )
        resp = jsonify(meta.model_dump())
        resp.headers["Cache-Control"] = "public, max-age=3600"
        return resp

    @JWKS.route(bp)
    def keys() -> Response:
        published: dict[str, PublicKey] = {}
        if gateway.signing_key is not None:
            public = gateway.signing_key.public_key
            published[public.key_id] = public
        if oauth is not None:
            published.update(oauth.issuer.public_keys())
        if gateway.answers is not None:
            published.update(gateway.answers.public_keys())
        resp = jsonify(jwks(published))
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    return bp
