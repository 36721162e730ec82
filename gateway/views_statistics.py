"""Analysts' endpoints for encrypted statistics (scope ``statistics``): thin shells."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from tongban.federation.dp import InvalidEpsilon
from tongban.federation.paillier import InvalidPublicKey
from tongban.federation.statistics import UnknownStatistic
from tongban.primitives.errors import NotFound, UnknownParameter

from .jobs import JobDenied
from .models import StatisticJob, StatisticRequest, StatisticsListing
from .oauth.flask import current_principal
from .operations import AUDIT_WRITE, Operation, Out
from .statistics import DpRequired, StatisticsService, StatisticUnavailable
from .statistics_store import BudgetExhausted

__all__ = ["OPERATIONS", "statistics_blueprint"]

_SCOPES = ("statistics",)
_LOCATION = {"Location": {"schema": {"type": "string"}}}

LIST = Operation(
    "GET",
    "/v1/statistics",
    "listStatistics",
    "statistics",
    "The statistics offered, the disclosure threshold and the analyst's budget",
    (Out(StatisticsListing, "The registry, threshold and budget."),),
    scopes=_SCOPES,
)
SUBMIT = Operation(
    "POST",
    "/v1/statistics",
    "submitStatistic",
    "statistics",
    "Run a Paillier statistic across departments under the analyst's key",
    (Out(StatisticJob, "Accepted and audited; fetch it at its Location.", 202, headers=_LOCATION),),
    (
        UnknownStatistic,
        UnknownParameter,
        InvalidPublicKey,
        InvalidEpsilon,
        JobDenied,
        BudgetExhausted,
        DpRequired,
        StatisticUnavailable,
        *AUDIT_WRITE,
    ),
    scopes=_SCOPES,
    body=StatisticRequest,
)
RESULT = Operation(
    "GET",
    "/v1/statistics/{job_id}",
    "getStatistic",
    "statistics",
    "A statistics job and, when done, the summed ciphertexts",
    (Out(StatisticJob, "Only the requester who submitted the job may read it."),),
    (NotFound,),
    scopes=_SCOPES,
    path_params={"job_id": ("^st-[0-9a-f]{24}$", "The statistics job's id.")},
)
OPERATIONS = (LIST, SUBMIT, RESULT)


def statistics_blueprint(service: StatisticsService) -> Blueprint:
    bp = Blueprint("statistics", __name__)

    @LIST.route(bp)
    def registry() -> Response:
        return jsonify(service.describe(current_principal().client_id))

    @SUBMIT.route(bp)
    def submit(body: StatisticRequest) -> tuple[Response, int, dict[str, str]]:
        job = service.submit(current_principal().client_id, body)
        location = url_for("statistics.result", job_id=job["id"])
        return jsonify(job), 202, {"Location": location}

    @RESULT.route(bp)
    def result(job_id: str) -> Response:
        return jsonify(service.get(current_principal().client_id, job_id))

    return bp
