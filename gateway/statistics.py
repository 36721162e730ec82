"""Encrypted statistics, gateway side: validate, authorize, audit, collect, multiply, keep.

The gateway holds no Paillier private key and never sees a department's plaintext: each
involved department encrypts its packed vector under the analyst's public key and signs
the ciphertexts; the gateway verifies those signatures, multiplies the ciphertexts
(:func:`federation.paillier.aggregate`) and keeps the encrypted sum for the analyst to
fetch and decrypt.

Who may run which statistic is a Casbin rule on the object ``statistic:<name>`` with the
purpose ``official_statistics`` (:mod:`gateway.jobs`); a denial is audited.

Disclosure control (the job's ``release``: a suppression threshold, default 10, and an
optional ε). Every contribution request carries it, signed, and every department echoes
what it applied, signed:

- without noise, a statistic with a single contributing department is suppressed *by that
  department* before encryption (cells under the threshold become zero, so no client can
  reveal them); a statistic summed over several departments, whose cell totals nobody sees
  before the analyst decrypts, is suppressed by the analyst's client on the decrypted
  counts, and that is the weaker control;
- with ``dp.epsilon``, every department adds its share of discrete Laplace noise
  (:mod:`federation.dp`), the ε is charged to the analyst's budget first
  (:mod:`gateway.statistics_store`), and suppression on the noisy counts is post-processing.
  ``require_dp`` makes the gateway refuse jobs without noise.

A job either covers every involved department or fails naming the one(s) that did not
contribute: never a silently partial total.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tongban.adapters.client import DepartmentClient
from tongban.adapters.deptfile import Declarations
from tongban.audit.canonical import decimal_text
from tongban.audit.sink import AuditSink
from tongban.federation.dp import parse_epsilon
from tongban.federation.packing import PackingLayout
from tongban.federation.paillier import (
    aggregate,
    key_fingerprint,
    parse_public_key,
    public_key_to_jwk,
)
from tongban.federation.statistics import (
    DEFAULT_THRESHOLD,
    MAX_THRESHOLD,
    REGISTRY,
    Release,
    Statistic,
    StatisticsRegistry,
)
from tongban.primitives.errors import Conflict, Forbidden, NotFound, TongbanError
from tongban.primitives.gm import sm3

from .jobs import STATISTICS_PURPOSE, JobPolicy, decision_record, statistic_object
from .models import StatisticRequest
from .statistics_store import StatisticsStore

__all__ = [
    "DEFAULT_THRESHOLD",
    "DpRequired",
    "Job",
    "StatisticUnavailable",
    "StatisticsService",
]


class DpRequired(Forbidden):
    slug = "dp-required"
    title = "This gateway releases statistics only with differential-privacy noise"


class StatisticUnavailable(Conflict):
    slug = "statistic-unavailable"
    title = "No department file declares this statistic"


@dataclass
class Job:
    id: str
    requester: str
    statistic: Statistic
    params: dict[str, str]
    key_fingerprint: str
    layout: PackingLayout
    release: Release
    status: str = "running"
    ciphertexts: list[int] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    audit_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        stat = self.statistic
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "statistic": stat.name,
            "params": dict(self.params),
            "key": self.key_fingerprint,
            "departments": list(stat.departments),
            "cells": [{"district": c, "year": self.params.get("year")} for c in stat.cells],
            "release": self._release(),
            "threshold": self.release.threshold,
        }
        if self.status == "done":
            layout = self.layout
            body["layout"] = {
                "counters": layout.counters,
                "value_bound": layout.value_bound,
                "parties": layout.parties,
                "n_bits": layout.n_bits,
                "slot_bits": layout.slot_bits,
                "slots_per_ciphertext": layout.slots_per_ciphertext,
                "ciphertexts": layout.ciphertexts,
                "count_companion": not stat.counts_records,
                "offsets": stat.offsets(self.release, layout.parties),
            }
            body["ciphertexts"] = [format(c, "x") for c in self.ciphertexts]
        if self.failures:
            body["failed"] = list(self.failures)
        return body

    def _release(self) -> dict[str, Any]:
        stat, release = self.statistic, self.release
        body: dict[str, Any] = {
            "threshold": release.threshold,
            "suppressed_by": "departments"
            if stat.suppressed_by_departments(release)
            else "analyst",
            "dp": None,
        }
        if release.epsilon is not None:
            parts = stat.noise(release, self.layout.parties)
            body["dp"] = {
                "mechanism": "distributed discrete Laplace",
                "epsilon": release.epsilon,
                "parts": [
                    {"epsilon": p.epsilon, "sensitivity": p.sensitivity, "scale": p.scale}
                    for p in parts
                ],
                "delta": sum(p.delta(len(stat.cells)) for p in parts),
            }
        return body


class StatisticsService:
    """Runs encrypted-statistics jobs; jobs and budgets are kept in ``store``."""

    def __init__(
        self,
        departments: DepartmentClient,
        audit: AuditSink,
        store: StatisticsStore,
        *,
        jobs: JobPolicy | None = None,
        registry: StatisticsRegistry = REGISTRY,
        threshold: int = DEFAULT_THRESHOLD,
        require_dp: bool = False,
        workers: int = 8,
        declared: Mapping[str, Declarations] | None = None,
    ) -> None:
        """``declared``: each department's declarations (its department file); a
        statistic a contributing department's file does not declare is unavailable:
        listed as such, and refused at submission. None: every statistic is declared."""
        if not 1 <= threshold <= MAX_THRESHOLD:
            raise ValueError(f"threshold: expected 1..{MAX_THRESHOLD}")
        self.registry = registry
        self.departments = departments
        self.audit = audit
        self.store = store
        self.jobs = jobs
        self.threshold = threshold
        self.require_dp = require_dp
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stats")
        self.undeclared: dict[str, tuple[str, ...]] = {}
        for statistic in registry:
            missing = tuple(
                d
                for d in statistic.departments
                if declared is not None
                and (d not in declared or statistic.name not in declared[d].statistics)
            )
            if missing:
                self.undeclared[statistic.name] = missing

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def offered(self) -> list[Statistic]:
        """Statistics whose departments are all connected to this gateway and declare
        them in their files."""
        connected = set(self.departments.departments)
        return [
            s
            for s in self.registry
            if set(s.departments) <= connected and s.name not in self.undeclared
        ]

    def describe(self, requester: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "statistics": [s.describe() for s in self.offered()],
            "unavailable": [
                {
                    "name": name,
                    "detail": f"not declared in the department file of {', '.join(missing)}",
                }
                for name, missing in self.undeclared.items()
            ],
            "threshold": self.threshold,
            "require_dp": self.require_dp,
            "budget": {"epsilon": self.store.budget},
        }
        if requester is not None:
            body["budget"]["remaining"] = self.store.remaining(requester)
        return body

    # --- jobs ---------------------------------------------------------------------------

    def _parse_dp(self, body: StatisticRequest) -> float | None:
        if body.dp is None:
            if self.require_dp:
                raise DpRequired("dp.epsilon: required by this gateway")
            return None
        return parse_epsilon(body.dp.epsilon)

    def submit(self, requester: str, body: StatisticRequest) -> dict[str, Any]:
        # A statistic whose departments are not connected is accepted and then fails,
        # naming them, exactly like a department that is down: never a partial total.
        statistic = self.registry.get(body.statistic)
        missing = self.undeclared.get(statistic.name)
        if missing:
            raise StatisticUnavailable(
                f"statistic: {statistic.name} is not declared in the department file of "
                f"{', '.join(missing)} (GET /v1/statistics lists what is available)"
            )
        params = statistic.check_params(body.params)
        key = parse_public_key(body.public_key)
        release = Release(self.threshold, self._parse_dp(body))
        layout = statistic.layout(key.n, release=release)
        decision = None
        if self.jobs is not None:  # denials are audited by the policy
            decision = self.jobs.authorize(
                requester,
                statistic_object(statistic.name),
                statistic.departments,
                STATISTICS_PURPOSE,
            )
        job = Job(
            id="st-" + secrets.token_hex(12),
            requester=requester,
            statistic=statistic,
            params=params,
            key_fingerprint=key_fingerprint(key),
            layout=layout,
            release=release,
        )
        remaining = None
        if release.epsilon is not None:  # charged before anybody computes anything
            remaining = self.store.spend(requester, job.id, release.epsilon)
        entry: dict[str, Any] = {
            "kind": "statistic",
            "requester": requester,
            "job": job.id,
            "statistic": statistic.name,
            "params": params,
            "key": job.key_fingerprint,
            "departments": list(statistic.departments),
            # audit entries hold no floats: ε as exact decimal text
            "release": {"threshold": release.threshold, "epsilon": decimal_text(release.epsilon)},
        }
        if decision is not None:
            entry["policy"] = decision_record(decision)
        if remaining is not None:
            entry["budget_remaining"] = decimal_text(remaining)
        # Durable before any department is asked: an unaudited job never runs.
        try:
            job.audit_index = self.audit.append(entry)
            self.store.save(job.id, requester, job.status, job.to_json())
        except Exception:
            if release.epsilon is not None:
                self.store.refund(job.id)
            raise
        self._run(job, public_key_to_jwk(key))
        return {"id": job.id, "status": job.status}

    def get(self, requester: str, job_id: str) -> dict[str, Any]:
        doc = self.store.load(job_id, requester) if isinstance(job_id, str) else None
        if doc is None:
            raise NotFound("statistics job: no such job for this requester")
        return doc

    def _run(self, job: Job, key_jwk: dict[str, Any]) -> None:
        statistic = job.statistic
        key = parse_public_key(key_jwk)
        layout = job.layout
        names = list(statistic.departments)
        release = job.release.to_json()

        def ask(department: str) -> list[int]:
            vector = self.departments.contribute(
                department,
                statistic.name,
                job.params,
                job.id,
                key_jwk,
                layout.parties,
                release,
            )
            aggregate(key, [vector], layout)  # shape and Z*(n^2) membership, per department
            return vector

        futures = {d: self._pool.submit(ask, d) for d in names}
        vectors: list[list[int]] = []
        for department, future in futures.items():
            try:
                vectors.append(future.result())
            except TongbanError as exc:
                job.failures.append({"department": department, "problem": exc.slug})
            except Exception:  # a bug must fail the job, not return a partial total
                job.failures.append({"department": department, "problem": "internal"})
        if job.failures:
            if job.release.epsilon is not None:
                # Before the store says "failed": whoever reads that may resubmit at once.
                self.store.refund(job.id)  # nothing was released
            self.audit.append(
                {
                    "kind": "statistic_done",
                    "requester": job.requester,
                    "job": job.id,
                    "statistic": statistic.name,
                    "result": "failed",
                    "failed": list(job.failures),
                }
            )
            self._finish(job, "failed")
            return
        total = aggregate(key, vectors, layout)
        width = (int(key.nsquare).bit_length() + 7) // 8
        digest = sm3(b"".join(c.to_bytes(width, "big") for c in total)).hex()
        self.audit.append(
            {
                "kind": "statistic_done",
                "requester": job.requester,
                "job": job.id,
                "statistic": statistic.name,
                "result": "done",
                "departments": names,
                "ciphertexts_sm3": digest,
            }
        )
        self._finish(job, "done", total)

    def _finish(self, job: Job, status: str, ciphertexts: list[int] | None = None) -> None:
        """Save the job's final state, and only then show it on ``job`` (what ``submit``
        answers): nothing reports a job finished that the store does not hold so."""
        final = dataclasses.replace(
            job, status=status, ciphertexts=job.ciphertexts if ciphertexts is None else ciphertexts
        )
        self.store.save(job.id, job.requester, final.status, final.to_json())
        job.status, job.ciphertexts = final.status, final.ciphertexts
