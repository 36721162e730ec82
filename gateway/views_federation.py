"""Federated training jobs (scope ``federation``): thin shells over :mod:`.federation_jobs`."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from tongban.primitives.errors import NotFound

from .federation_jobs import FederationJobs
from .jobs import JobDenied
from .models import FederationJob, FederationJobRequest
from .oauth.flask import current_principal
from .operations import AUDIT_WRITE, Operation, Out

__all__ = ["OPERATIONS", "federation_blueprint"]

_SCOPES = ("federation",)

SUBMIT = Operation(
    "POST",
    "/v1/federation/jobs",
    "submitFederationJob",
    "federation",
    "Train the outreach model across county bureaus with Flower",
    (
        Out(
            FederationJob,
            "Policy-checked and audited; follow it at its Location.",
            202,
            headers={"Location": {"schema": {"type": "string"}}},
        ),
    ),
    (JobDenied, *AUDIT_WRITE),
    scopes=_SCOPES,
    body=FederationJobRequest,
)
JOB = Operation(
    "GET",
    "/v1/federation/jobs/{job_id}",
    "getFederationJob",
    "federation",
    "A training job's progress and, when done, its result",
    (Out(FederationJob, "Only the requester who submitted the job may read it."),),
    (NotFound,),
    scopes=_SCOPES,
    path_params={"job_id": ("^fl-[0-9a-f]{24}$", "The federated training job's id.")},
)
OPERATIONS = (SUBMIT, JOB)


def federation_blueprint(service: FederationJobs) -> Blueprint:
    bp = Blueprint("federation", __name__)

    @SUBMIT.route(bp)
    def submit(body: FederationJobRequest) -> tuple[Response, int, dict[str, str]]:
        job = service.submit(current_principal().client_id, body)
        location = url_for("federation.job", job_id=job["id"])
        return jsonify(job), 202, {"Location": location}

    @JOB.route(bp)
    def job(job_id: str) -> Response:
        return jsonify(service.get(current_principal().client_id, job_id))

    return bp
