"""Federated training jobs, gateway side: validate, authorize, audit, run, keep.

Horizontal jobs: the gateway does not train; it submits the Flower app to the deployment
that ``tongban federation up`` runs beside it (SuperLink + one SuperNode per county bureau)
and follows the run. Vertical jobs: the gateway runs the coordinator of
:mod:`federation.vertical` (PSI, then Paillier-protected logistic regression), which only
schedules and relays masked vectors and ciphertexts. Who may train is a Casbin rule on
``federation:horizontal`` or ``federation:vertical`` with the purpose ``model_training``
(:mod:`gateway.jobs`); a denial is audited there. An allowed job is audited when it starts
(requester, the departments the policy decided on, configuration) and when it ends (status,
who trained, and the SM3 hash of the final model parameters).

Who trained is what the job record and the completion entry name, and only that: for a
horizontal job the county bureaus' SuperNodes of the deployment (``bureaus``: node,
districts, rows; no department adapter is asked anything), for a vertical one the
departments whose parties ran (``departments``).

The training itself is a seam (:class:`Trainer`): the default runs the real app against
the deployment found in the data directory.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tongban.audit.canonical import decimal_text
from tongban.audit.sink import AuditSink
from tongban.primitives.errors import BadRequest, NotFound

from .jobs import TRAINING_PURPOSE, JobPolicy, decision_record, declared_jobs
from .models import FederationJobRequest
from .statistics_store import StatisticsStore

__all__ = [
    "FederationJob",
    "FederationJobs",
    "FederationRequest",
    "NoDeployment",
    "Trainer",
    "deployment_trainer",
    "vertical_trainer",
]

KINDS = ("horizontal", "vertical")
FINISHED = ("done", "failed")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederationRequest:
    """A validated job request."""

    rounds: int
    secagg: bool = False
    dp_noise: float = 0.0
    dp_clip: float = 0.5
    local_epochs: int = 20
    departments: tuple[str, ...] = ()
    kind: str = "horizontal"
    batch_size: int = 1024

    @property
    def object(self) -> str:
        """The policy object of the job (:mod:`gateway.jobs`)."""
        return f"federation:{self.kind}"

    def config(self) -> dict[str, Any]:
        if self.kind == "vertical":
            return {"kind": "vertical", "rounds": self.rounds, "batch_size": self.batch_size}
        return {
            "kind": "horizontal",
            "rounds": self.rounds,
            "secagg": self.secagg,
            "dp_noise": self.dp_noise,
            "dp_clip": self.dp_clip,
            "local_epochs": self.local_epochs,
        }

    def audit_config(self) -> dict[str, Any]:
        """The configuration as the audit log keeps it (no floats: decimal strings)."""
        if self.kind == "vertical":
            return self.config()
        return self.config() | {
            "dp_noise": decimal_text(self.dp_noise),
            "dp_clip": decimal_text(self.dp_clip),
        }

    @classmethod
    def parse(
        cls, body: FederationJobRequest, default_departments: Mapping[str, tuple[str, ...]]
    ) -> FederationRequest:
        """The rules across fields: members of the other kind, and ``departments``."""
        kind = body.kind
        given = body.model_fields_set
        if kind == "vertical":
            for name in ("secagg", "dp_noise", "dp_clip", "local_epochs"):
                if name in given:
                    raise BadRequest(f"{name}: horizontal jobs only")
        elif "batch_size" in given:
            raise BadRequest("batch_size: vertical jobs only")
        departments = body.departments or list(default_departments[kind])
        # The departments are what policy decides on, so a request may not narrow them: a
        # vertical job reads health, hrss and civil rows whatever it names.
        involved = tuple(sorted(set(default_departments[kind])))
        if tuple(sorted(set(departments))) != involved:
            raise BadRequest(f"departments: a {kind} job involves {', '.join(involved)}")
        return cls(
            body.rounds,
            body.secagg,
            float(body.dp_noise),
            float(body.dp_clip),
            body.local_epochs,
            involved,
            kind,
            body.batch_size,
        )


class Trainer(Protocol):
    """Runs one job to completion; ``progress`` sees each round's metrics."""

    def __call__(
        self, request: FederationRequest, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]: ...


class NoDeployment(RuntimeError):
    """No ``tongban federation up`` is running for this data directory."""


def deployment_trainer(data_dir: Path) -> Trainer:
    """The real trainer: the Flower app against the deployment ``federation up`` runs for
    ``data_dir``; returns the training report."""

    def train(
        request: FederationRequest, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        from tongban.federation.features import load_training_table
        from tongban.federation.horizontal.deploy import read_deployment
        from tongban.federation.horizontal.runner import build_report, bureaus_of, run_training
        from tongban.federation.horizontal.settings import RunSettings

        dep = read_deployment(data_dir)
        if dep is None:
            raise NoDeployment("no federation deployment is running (tongban federation up)")
        progress({"event": "bureaus", "bureaus": bureaus_of(dep)})
        settings = RunSettings(
            rounds=request.rounds,
            local_epochs=request.local_epochs,
            num_partitions=dep.num_partitions,
            n_features=len(load_training_table(data_dir).columns),
            secagg=request.secagg,
            dp_noise=request.dp_noise,
            dp_clip=request.dp_clip,
            eval_data_dir=str(data_dir),
            out_dir=str(out_dir),
        )

        def on_event(ev: dict[str, Any]) -> None:
            if ev["event"] == "round":
                progress(ev)

        result = run_training(dep, settings, on_event=on_event)
        return build_report(result, data_dir)

    return train


def vertical_trainer(data_dir: Path) -> Trainer:
    """Vertical training (:mod:`federation.vertical`): ECDH-PSI across the departments,
    then Paillier-protected logistic regression, run beside the gateway as the relay."""

    def train(
        request: FederationRequest, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        from tongban.federation.vertical.runner import run_vertical

        def on_event(ev: dict[str, Any]) -> None:
            if ev.get("event") == "round":  # its seconds are the epoch's, t is cumulative
                progress(ev | {"round_seconds": ev.get("seconds"), "elapsed_seconds": ev.get("t")})

        return run_vertical(
            data_dir, epochs=request.rounds, batch_size=request.batch_size, progress=on_event
        )

    return train


@dataclass
class FederationJob:
    """One job as this worker knows it. Never mutated in place by the runner: each change
    is built as a new state, saved, and only then published (:meth:`FederationJobs._update`).
    """

    id: str
    requester: str
    request: FederationRequest
    status: str = "queued"
    rounds: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    audit_index: int | None = None
    #: Horizontal jobs: the SuperNodes (county bureaus) that trained, as the trainer found
    #: them in the deployment (``node``, ``districts``, ``rows``); empty until it has.
    bureaus: list[dict[str, Any]] = field(default_factory=list)
    #: Vertical jobs: the departments whose parties run (the report's, once it has run).
    departments: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "config": self.request.config(),
        }
        # What took part, and nothing else: a horizontal job is trained by the bureaus'
        # SuperNodes, no department adapter is asked; a vertical one by departments.
        if self.request.kind == "horizontal":
            body["bureaus"] = [dict(b) for b in self.bureaus]
        else:
            body["departments"] = list(self.departments)
        body["rounds"] = list(self.rounds)
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body


_RESULT_KEYS = (
    "auc_federated",
    "auc_centralized",
    "epsilon",
    "delta",
    "model_sm3",
    "bureaus",
    "partitions",
    "run_id",
)
_ROUND_KEYS = (
    "round",
    "loss",
    "auc",
    "train_loss",
    "epsilon",
    "round_seconds",
    "elapsed_seconds",
)


def _bureaus(value: Any) -> list[dict[str, Any]]:
    """The trainer's list of bureaus, as the job keeps it."""
    if not isinstance(value, list):
        return []
    keep = ("node", "districts", "rows")
    return [{k: b[k] for k in keep if k in b} for b in value if isinstance(b, Mapping)]


class FederationJobs:
    """Runs training jobs one at a time (they share one deployment). With a ``store``, each
    job's document (status, rounds so far, result) is saved at every change, so any
    gateway worker can serve it and it survives a restart; a job whose worker died stays
    ``running`` in the store (its audit trail shows no ``completed`` or ``failed``).

    Every change is saved *before* this worker shows it (:meth:`get`, :meth:`wait`): whoever
    sees a job finished here can also read it finished from the store, in any worker."""

    def __init__(
        self,
        data_dir: Path,
        audit: AuditSink,
        *,
        jobs: JobPolicy | None = None,
        trainer: Trainer | None = None,
        store: StatisticsStore | None = None,
        vertical: Trainer | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.audit = audit
        self.policy = jobs
        self.trainers: dict[str, Trainer] = {
            "horizontal": trainer or deployment_trainer(data_dir),
            "vertical": vertical or vertical_trainer(data_dir),
        }
        declared = declared_jobs()
        self.default_departments = {k: declared[f"federation:{k}"].departments for k in KINDS}
        self._jobs: dict[str, FederationJob] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="federation")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, requester: str, body: FederationJobRequest) -> dict[str, Any]:
        request = FederationRequest.parse(body, self.default_departments)
        decision = None
        if self.policy is not None:  # denials are audited by the policy
            decision = self.policy.authorize(
                requester, request.object, request.departments, TRAINING_PURPOSE
            )
        job = FederationJob("fl-" + secrets.token_hex(12), requester, request)
        if request.kind == "vertical":
            job.departments = list(request.departments)
        entry: dict[str, Any] = {
            "kind": "federation_job",
            "event": "started",
            "requester": requester,
            "job": job.id,
            "object": request.object,
            "departments": list(request.departments),
            "config": request.audit_config(),
        }
        if decision is not None:
            entry["policy"] = decision_record(decision)
        job.audit_index = self.audit.append(entry)
        self._save(job)  # before anybody can see it, like every later change
        with self._lock:
            self._jobs[job.id] = job
        self._pool.submit(self._run, job)
        return {"id": job.id, "status": job.status}

    def get(self, requester: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.requester == requester:
                return job.to_json()
        if job is None and self.store is not None and isinstance(job_id, str):
            doc = self.store.load(job_id, requester)  # run by another worker, or before
            if doc is not None:
                return doc
        raise NotFound("federation job: no such job for this requester")

    def _save(self, job: FederationJob) -> None:
        if self.store is not None:
            self.store.save(job.id, job.requester, job.status, job.to_json())

    def _update(self, job: FederationJob, **changes: Any) -> None:
        """Persist the job's next state, then publish it to this worker's readers.

        If the store refuses the save, the state is published anyway (and the failure
        logged): the job must still finish here rather than look ``running`` forever;
        the store then lags, as it does for a worker that died."""
        with self._lock:
            nxt = dataclasses.replace(job, **changes)
        try:
            self._save(nxt)
        except Exception as exc:  # logged; the job goes on
            log.warning("federation job %s: state not saved (%s)", job.id, type(exc).__name__)
        with self._changed:
            for name, value in changes.items():
                setattr(job, name, value)
            self._changed.notify_all()

    def wait(self, job_id: str, timeout: float) -> None:
        """Block until the job has finished (for the CLI and tests); by then the store
        holds its final state."""
        with self._changed:
            job = self._jobs[job_id]
            if not self._changed.wait_for(lambda: job.status in FINISHED, timeout):
                raise TimeoutError(f"federation job {job_id} still running")

    def _run(self, job: FederationJob) -> None:
        out = self.data_dir / "federation" / "jobs" / job.id

        def progress(ev: dict[str, Any]) -> None:
            if ev.get("event") == "bureaus":
                self._update(job, bureaus=_bureaus(ev.get("bureaus")))
                return
            self._update(job, rounds=[*job.rounds, {k: ev[k] for k in _ROUND_KEYS if k in ev}])

        self._update(job, status="running")
        try:
            report = self.trainers[job.request.kind](job.request, out.resolve(), progress)
            result = {k: report[k] for k in _RESULT_KEYS if k in report}
            took_part = self._took_part(job, report)
            self.audit.append(  # a job is done only once its completion is audited
                {
                    "kind": "federation_job",
                    "event": "completed",
                    "job": job.id,
                    "requester": job.requester,
                    **took_part,
                    "config": job.request.audit_config(),
                    "model_sm3": report["model_sm3"],
                    "auc_federated": decimal_text(float(report["auc_federated"])),
                    "epsilon": decimal_text(report.get("epsilon")),
                }
            )
        except Exception as exc:  # the job fails; the gateway keeps serving
            try:
                self.audit.append(
                    {"kind": "federation_job", "event": "failed", "job": job.id,
                     "requester": job.requester, "error": type(exc).__name__}
                )  # fmt: skip
            except Exception as audit_exc:  # still fail the job, not leave it running
                log.warning("federation job %s: failure not audited (%s)", job.id,
                            type(audit_exc).__name__)  # fmt: skip
            self._update(job, status="failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._update(job, result=result, status="done", **took_part)

    @staticmethod
    def _took_part(job: FederationJob, report: Mapping[str, Any]) -> dict[str, Any]:
        """Who trained: the bureaus' SuperNodes of a horizontal job, the departments of a
        vertical one, as the trainer's report names them."""
        if job.request.kind == "horizontal":
            return {"bureaus": _bureaus(report.get("bureaus")) or job.bureaus}
        return {"departments": sorted(report.get("departments") or job.departments)}
