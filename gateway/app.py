"""The gateway's HTTP shell (Flask). Views parse, call the core, and render."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify

from adapters.service import install_problem_handlers
from primitives.jws import jwks

from .oauth.flask import init_oauth
from .services import Gateway
from .views_audit import audit_blueprint

__all__ = ["MAX_BODY", "Gateway", "create_app"]

MAX_BODY = 64 * 1024
log = logging.getLogger("tongban.gateway")


def create_app(gateway: Gateway) -> Flask:
    app = Flask("tongban.gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    install_problem_handlers(app, MAX_BODY, log)
    oauth = gateway.extras.get("oauth")
    if oauth is not None:
        init_oauth(
            app,
            oauth["registry"],
            oauth["issuer"],
            token_endpoint=oauth["token_endpoint"],
            replay_cache=oauth.get("replay_cache"),
            citizen_verifier=oauth.get("citizen_verifier"),
        )
    app.register_blueprint(audit_blueprint(gateway))

    @app.get("/healthz")
    def healthz() -> Response:
        # Liveness is "this process answers"; a department being down degrades answers to
        # `undetermined` but does not make the gateway unhealthy.
        return jsonify(gateway.health())

    @app.get("/.well-known/jwks.json")
    def keys() -> Response:
        published = {}
        if gateway.signing_key is not None:
            public = gateway.signing_key.public_key
            published[public.key_id] = public
        if oauth is not None:
            published.update(oauth["issuer"].public_keys())
        resp = jsonify(jwks(published))
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    return app
