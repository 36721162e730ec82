"""Federated training jobs (scope ``federation``): thin shells over :mod:`.federation_jobs`."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from tongban.primitives.bodies import parse_body

from .federation_jobs import FederationJobs
from .models import FederationJobRequest
from .oauth.flask import current_principal, require_token
from .views_common import json_body

__all__ = ["federation_blueprint"]


def federation_blueprint(service: FederationJobs) -> Blueprint:
    bp = Blueprint("federation", __name__)

    @bp.post("/v1/federation/jobs")
    @require_token("federation")
    def submit() -> tuple[Response, int, dict[str, str]]:
        body = parse_body(FederationJobRequest, json_body())
        job = service.submit(current_principal().client_id, body)
        location = url_for("federation.job", job_id=job["id"])
        return jsonify(job), 202, {"Location": location}

    @bp.get("/v1/federation/jobs/<job_id>")
    @require_token("federation")
    def job(job_id: str) -> Response:
        return jsonify(service.get(current_principal().client_id, job_id))

    return bp
