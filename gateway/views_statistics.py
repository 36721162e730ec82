"""Analysts' endpoints for encrypted statistics (scope ``statistics``): thin shells."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from primitives.errors import BadRequest

from .oauth.flask import current_principal, require_token
from .statistics import StatisticsService

__all__ = ["statistics_blueprint"]


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    return body


def statistics_blueprint(service: StatisticsService) -> Blueprint:
    bp = Blueprint("statistics", __name__)

    @bp.get("/v1/statistics")
    @require_token("statistics")
    def registry() -> Response:
        return jsonify(service.describe(current_principal().client_id))

    @bp.post("/v1/statistics")
    @require_token("statistics")
    def submit() -> tuple[Response, int, dict[str, str]]:
        job = service.submit(current_principal().client_id, _json_body())
        location = url_for("statistics.result", job_id=job["id"])
        return jsonify(job), 202, {"Location": location}

    @bp.get("/v1/statistics/<job_id>")
    @require_token("statistics")
    def result(job_id: str) -> Response:
        return jsonify(service.get(current_principal().client_id, job_id))

    return bp
