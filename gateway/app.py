"""The gateway's HTTP shell (Flask). Views parse, call the core, and render."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tongban.audit.log import AuditBehindWitnesses
from tongban.exposure import install_hsts, install_security_headers
from tongban.http_shell import install_problem_handlers, problem_response
from tongban.primitives.errors import StoreUnavailable

from .client_changes import ClientAdmin
from .metrics import install_metrics
from .oauth.flask import init_oauth
from .openapi import build_openapi, docs_blueprint
from .operations import open_when_diverged
from .pages import mount_pages
from .services import AuditEvents, Gateway
from .views_admin import admin_blueprint
from .views_audit import audit_blueprint
from .views_checks import BATCH_MAX_BODY, checks_blueprint
from .views_citizen import citizen_blueprint
from .views_federation import federation_blueprint
from .views_operations import OPERATIONS, operations_blueprint
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

    if gateway.policy_admin is not None and oauth is not None and gateway.audit is not None:
        clients = ClientAdmin(oauth.registry, AuditEvents(gateway.audit))
        app.register_blueprint(
            admin_blueprint(
                gateway.policy_admin,
                oauth.registry,
                clients,
                gateway.jwks_fetch,
                gateway.keys_dir,
            )
        )

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

    app.register_blueprint(operations_blueprint(gateway))
    return app


_OPEN_WHEN_DIVERGED = open_when_diverged(OPERATIONS)


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
        rule = request.url_rule
        if reason is not None and (rule is None or rule.rule not in _OPEN_WHEN_DIVERGED):
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
