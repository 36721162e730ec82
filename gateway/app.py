"""The gateway's HTTP shell (Flask). Views parse, call the core, and render."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tongban.audit.log import AuditBehindWitnesses
from tongban.exposure import install_hsts, install_security_headers
from tongban.http_shell import install_problem_handlers, problem_response
from tongban.primitives.errors import NotFound, StoreUnavailable
from tongban.primitives.jws import PublicKey, jwks

from .metrics import install_metrics
from .models import AuthorizationServerMetadata
from .oauth.flask import init_oauth
from .openapi import build_openapi, docs_blueprint
from .pages import mount_pages
from .services import Gateway
from .views_audit import audit_blueprint
from .views_checks import BATCH_MAX_BODY, checks_blueprint
from .views_citizen import citizen_blueprint
from .views_federation import federation_blueprint
from .views_statistics import statistics_blueprint

__all__ = ["MAX_BODY", "Gateway", "create_app"]

MAX_BODY = 64 * 1024
log = logging.getLogger("tongban.gateway")


def create_app(gateway: Gateway) -> Flask:
    app = Flask("tongban.gateway", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    install_problem_handlers(app, MAX_BODY, log)
    _install_store_unavailable(app)
    install_metrics(
        app, audit=gateway.audit, checkpointer=gateway.checkpointer, credential=gateway.metrics
    )
    oauth = gateway.oauth
    if oauth is not None:
        init_oauth(
            app,
            oauth.registry,
            oauth.issuer,
            token_endpoint=oauth.token_endpoint,
            replay_cache=oauth.replay_cache,
            citizen_verifier=oauth.citizen_verifier,
            token_throttle=oauth.token_throttle,
        )
    app.register_blueprint(audit_blueprint(gateway))
    mount_pages(app, gateway)
    checker = gateway.checker
    if checker is not None:
        app.register_blueprint(checks_blueprint(checker, gateway.policy_admin))

        @app.before_request
        def _batch_limit() -> None:
            # Batches carry up to 10,000 subjects; every other body stays small.
            if request.path == "/v1/checks/batch":
                request.max_content_length = BATCH_MAX_BODY

    if gateway.consents is not None:
        app.register_blueprint(citizen_blueprint(gateway, gateway.consents))

    if gateway.statistics is not None:
        app.register_blueprint(statistics_blueprint(gateway.statistics))

    if gateway.federation is not None:
        app.register_blueprint(federation_blueprint(gateway.federation))

    server_url = oauth.issuer.issuer if oauth is not None else ""
    app.register_blueprint(
        docs_blueprint(lambda: build_openapi(server_url, catalog=gateway.catalog))
    )

    install_hsts(app)
    install_security_headers(app)
    _install_integrity_guard(app, gateway)

    @app.get("/healthz")
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

    @app.get("/livez")
    def livez() -> Response:
        return jsonify(status="ok")  # this process answers: nothing else is asked

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        body = gateway.readiness()
        return jsonify(body), 200 if body["status"] == "ready" else 503

    _well_known(app, gateway)
    return app


_OPEN_WHEN_DIVERGED = ("/healthz", "/livez", "/readyz", "/metrics", "/.well-known/")


def _install_integrity_guard(app: Flask, gateway: Gateway) -> None:
    """A gateway whose log is behind what a witness cosigned answers nothing but its
    health (503, saying why), its metrics and its keys: no check, token, consent or page
    is served from a log that lost entries."""
    checkpointer = gateway.checkpointer
    if checkpointer is None:
        return

    @app.before_request
    def _refuse_when_diverged() -> None:
        reason = checkpointer.diverged
        if reason is not None and not request.path.startswith(_OPEN_WHEN_DIVERGED):
            raise AuditBehindWitnesses(reason)


def _install_store_unavailable(app: Flask) -> None:
    """A database that is away (connection refused or dropped, read-only, disk full, pool
    exhausted) is a 503 ``store-unavailable``, not a 500: the client may retry, and no
    answer leaves without its audit entry. Translated here, at the HTTP boundary, for the
    stores that do not translate their own errors; the driver's message is not echoed."""

    def unavailable(exc: Exception) -> Response:
        log.warning("store unavailable: %s", type(exc).__name__)
        return problem_response(StoreUnavailable("a store is unavailable"))

    for error in (OperationalError, InterfaceError, InternalError, PoolTimeout):
        app.register_error_handler(error, unavailable)


def _well_known(app: Flask, gateway: Gateway) -> None:
    """``/.well-known/``: the keys everything the gateway signs verifies with, and the
    authorization server's metadata (RFC 8414)."""
    oauth = gateway.oauth

    @app.get("/.well-known/oauth-authorization-server")
    def server_metadata() -> Response:
        if oauth is None:
            raise NotFound("this gateway issues no tokens")
        meta = AuthorizationServerMetadata.of(
            oauth.issuer.issuer, oauth.token_endpoint, oauth.registry.known_scopes
        )
        resp = jsonify(meta.model_dump())
        resp.headers["Cache-Control"] = "public, max-age=3600"
        return resp

    @app.get("/.well-known/jwks.json")
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
