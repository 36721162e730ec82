"""Federated training jobs, gateway side, without Flower: the order in which a job's state
reaches the store and its readers, and what the job record says took part."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RecordingAudit
from tongban.gateway.federation_jobs import FederationJobs
from tongban.gateway.models import FederationJobRequest
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, StoreUnavailable

BUREAUS = [
    {"node": 0, "districts": ["150102", "150105"], "rows": 120},
    {"node": 1, "districts": ["150203"], "rows": 80},
    {"node": 2, "districts": ["150403"], "rows": 95},
]
REPORT = {"model_sm3": "ab" * 32, "auc_federated": 0.8, "auc_centralized": 0.81}


class _GatedStore:
    """A job store whose save of a finished job blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.saving_final = threading.Event()
        self.gate = threading.Event()

    def save(self, job_id: str, requester: str, status: str, doc: Mapping[str, Any]) -> None:
        if status in ("done", "failed"):
            self.saving_final.set()
            assert self.gate.wait(30), "the test never opened the gate"
        self.docs[job_id] = dict(doc)

    def load(self, job_id: str, requester: str) -> dict[str, Any] | None:
        return self.docs.get(job_id)


def _trainer(request: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
    progress({"event": "bureaus", "bureaus": BUREAUS})
    progress({"event": "round", "round": 1, "loss": 0.5, "auc": 0.7, "t": 3.0,
              "round_seconds": 3.0, "elapsed_seconds": 3.0})  # fmt: skip
    return dict(REPORT, bureaus=BUREAUS)


@pytest.mark.parametrize("fails", [False, True], ids=["done", "failed"])
def test_a_job_shows_finished_only_once_the_store_holds_it(tmp_path: Path, fails: bool):
    """The flake of test_api_job_runs_vertically_audited_and_stored: wait() returned while
    the store still said "running". Deterministic: the final save is held at a gate."""

    def trainer(request: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
        if fails:
            raise RuntimeError("boom")
        return dict(REPORT)

    store = _GatedStore()
    jobs = FederationJobs(tmp_path, RecordingAudit(), trainer=trainer, store=store)  # type: ignore[arg-type]
    try:
        job = jobs.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "horizontal", "rounds": 1})
        )
        assert store.saving_final.wait(30)
        # The final save has begun and not finished: nobody may see the job finished yet.
        assert jobs.get("analyst", job["id"])["status"] == "running"
        with pytest.raises(TimeoutError):
            jobs.wait(job["id"], timeout=0.05)
        store.gate.set()
        jobs.wait(job["id"], timeout=30)
        state = jobs.get("analyst", job["id"])
    finally:
        store.gate.set()
        jobs.close()
    assert state["status"] == ("failed" if fails else "done")
    assert store.docs[job["id"]] == state


def test_a_store_that_refuses_the_final_save_still_lets_the_job_finish(tmp_path: Path):
    class Broken(_GatedStore):
        def save(self, job_id: str, requester: str, status: str, doc: Mapping[str, Any]) -> None:
            if status == "done":
                raise StoreUnavailable("the statistics store is unavailable")
            super().save(job_id, requester, status, doc)

    store = Broken()
    jobs = FederationJobs(tmp_path, RecordingAudit(), trainer=_trainer, store=store)  # type: ignore[arg-type]
    try:
        job = jobs.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "horizontal", "rounds": 1})
        )
        jobs.wait(job["id"], timeout=30)  # not stuck "running" in this worker
        assert jobs.get("analyst", job["id"])["status"] == "done"
    finally:
        jobs.close()
    assert store.docs[job["id"]]["status"] == "running"  # the store lags, as for a dead worker


def test_a_horizontal_job_names_the_bureaus_that_trained_and_no_department(tmp_path: Path):
    audit = RecordingAudit()
    ids: list[str] = []
    submitted = threading.Event()
    seen: list[dict[str, Any]] = []

    def trainer(request: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
        progress({"event": "bureaus", "bureaus": BUREAUS})
        assert submitted.wait(30)
        seen.append(jobs.get("analyst", ids[0]))  # while it runs
        return dict(REPORT, bureaus=BUREAUS)

    jobs = FederationJobs(tmp_path, audit, trainer=trainer)
    try:
        job = jobs.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "horizontal", "rounds": 1})
        )
        ids.append(job["id"])
        submitted.set()
        jobs.wait(job["id"], timeout=30)
        state = jobs.get("analyst", job["id"])
    finally:
        submitted.set()
        jobs.close()
    assert "departments" not in state and "departments" not in seen[0]
    assert seen[0]["bureaus"] == BUREAUS  # known as soon as the trainer found them
    assert state["bureaus"] == BUREAUS
    started, completed = audit.entries
    assert completed["event"] == "completed"
    assert completed["bureaus"] == BUREAUS and "departments" not in completed
    # The start entry records what the policy decided on, beside the decision.
    assert started["departments"] == ["health"]


def test_a_vertical_job_names_the_departments_whose_parties_ran(tmp_path: Path):
    audit = RecordingAudit()

    def vertical(request: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
        progress({"event": "round", "round": 1, "loss": 0.6, "auc": 0.7,
                  "round_seconds": 2.0, "elapsed_seconds": 2.5})  # fmt: skip
        return dict(REPORT, departments=["hrss", "health", "civil"])

    jobs = FederationJobs(tmp_path, audit, vertical=vertical)
    try:
        job = jobs.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "vertical", "rounds": 1})
        )
        jobs.wait(job["id"], timeout=30)
        state = jobs.get("analyst", job["id"])
    finally:
        jobs.close()
    assert state["departments"] == ["civil", "health", "hrss"] and "bureaus" not in state
    assert state["rounds"] == [
        {"round": 1, "loss": 0.6, "auc": 0.7, "round_seconds": 2.0, "elapsed_seconds": 2.5}
    ]
    assert audit.entries[-1]["departments"] == ["civil", "health", "hrss"]


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "vertical", "rounds": 1, "departments": ["health"]},  # would skip hrss, civil
        {"kind": "horizontal", "rounds": 1, "departments": ["police"]},
    ],
)
def test_a_request_cannot_choose_the_departments_policy_decides_on(
    tmp_path: Path, body: dict[str, Any]
):
    jobs = FederationJobs(tmp_path, RecordingAudit(), trainer=_trainer, vertical=_trainer)
    try:
        with pytest.raises(BadRequest, match=r"departments: a .* job involves") as info:
            jobs.submit("analyst", parse_body(FederationJobRequest, body))
    finally:
        jobs.close()
    assert "police" not in info.value.detail
