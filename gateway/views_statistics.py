"""Analysts' endpoints for encrypted statistics (scope ``statistics``): thin shells."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from tongban.primitives.bodies import parse_body

from .models import StatisticRequest
from .oauth.flask import current_principal, require_token
from .statistics import StatisticsService
from .views_common import json_body

__all__ = ["statistics_blueprint"]


def statistics_blueprint(service: StatisticsService) -> Blueprint:
    bp = Blueprint("statistics", __name__)

    @bp.get("/v1/statistics")
    @require_token("statistics")
    def registry() -> Response:
        return jsonify(service.describe(current_principal().client_id))

    @bp.post("/v1/statistics")
    @require_token("statistics")
    def submit() -> tuple[Response, int, dict[str, str]]:
        body = parse_body(StatisticRequest, json_body())
        job = service.submit(current_principal().client_id, body)
        location = url_for("statistics.result", job_id=job["id"])
        return jsonify(job), 202, {"Location": location}

    @bp.get("/v1/statistics/<job_id>")
    @require_token("statistics")
    def result(job_id: str) -> Response:
        return jsonify(service.get(current_principal().client_id, job_id))

    return bp
