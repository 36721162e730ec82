"""Encrypted statistics, gateway side: validate, audit, collect, multiply, keep.

The gateway holds no Paillier private key and never sees a department's plaintext: each
involved department encrypts its packed vector under the analyst's public key and signs
the ciphertexts; the gateway verifies those signatures, multiplies the ciphertexts
(:func:`federation.paillier.aggregate`) and keeps the encrypted sum for the analyst to
fetch and decrypt.

Disclosure control. The gateway cannot see values, so it cannot suppress small cells.
Suppression happens where values are first seen, in the analyst's client
(``tongban stats run``), using the ``threshold`` this service publishes with each job. A
client that ignores it can see small cells; the controls here are the enumerated
parameters, the scope and the audit trail. Differential-privacy noise is not implemented.

A job either covers every involved department or fails naming the one(s) that did not
contribute: never a silently partial total.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.client import DepartmentClient
from federation.packing import PackingLayout
from federation.paillier import (
    aggregate,
    key_fingerprint,
    parse_public_key,
    public_key_to_jwk,
)
from federation.statistics import REGISTRY, Statistic, StatisticsRegistry
from primitives.errors import BadRequest, NotFound, TongbanError
from primitives.gm import sm3

__all__ = ["DEFAULT_THRESHOLD", "StatisticsService"]

DEFAULT_THRESHOLD = 10
_FIELDS = frozenset({"statistic", "params", "public_key"})


class EventSink(Protocol):
    def append(self, event: Mapping[str, Any], subject_id: str | None = None) -> int: ...


@dataclass
class Job:
    id: str
    requester: str
    statistic: Statistic
    params: dict[str, str]
    key_fingerprint: str
    layout: PackingLayout
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
            }
            body["ciphertexts"] = [format(c, "x") for c in self.ciphertexts]
        if self.failures:
            body["failed"] = list(self.failures)
        return body


class StatisticsService:
    """Runs encrypted-statistics jobs; results are kept in memory (bounded)."""

    def __init__(
        self,
        departments: DepartmentClient,
        audit: EventSink,
        *,
        registry: StatisticsRegistry = REGISTRY,
        threshold: int = DEFAULT_THRESHOLD,
        max_jobs: int = 1000,
        workers: int = 8,
    ) -> None:
        self.registry = registry
        self.departments = departments
        self.audit = audit
        self.threshold = threshold
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stats")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def offered(self) -> list[Statistic]:
        """Statistics whose departments are all connected to this gateway."""
        connected = set(self.departments.departments)
        return [s for s in self.registry if set(s.departments) <= connected]

    def describe(self) -> dict[str, Any]:
        return {
            "statistics": [s.describe() for s in self.offered()],
            "threshold": self.threshold,
        }

    # --- jobs ---------------------------------------------------------------------------

    def submit(self, requester: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise BadRequest("body: expected a JSON object")
        extra = sorted(str(k) for k in body if k not in _FIELDS)
        if extra:
            raise BadRequest(f"{extra[0]}: unexpected member")
        # A statistic whose departments are not connected is accepted and then fails,
        # naming them, exactly like a department that is down: never a partial total.
        statistic = self.registry.get(body.get("statistic"))
        params = statistic.check_params(body.get("params"))
        if "public_key" not in body:
            raise BadRequest("public_key: required")
        key = parse_public_key(body["public_key"])
        job = Job(
            id="st-" + secrets.token_hex(12),
            requester=requester,
            statistic=statistic,
            params=params,
            key_fingerprint=key_fingerprint(key),
            layout=statistic.layout(key.n),
        )
        # Durable before any department is asked: an unaudited job never runs.
        job.audit_index = self.audit.append(
            {
                "kind": "statistic",
                "requester": requester,
                "job": job.id,
                "statistic": statistic.name,
                "params": params,
                "key": job.key_fingerprint,
                "departments": list(statistic.departments),
                "threshold": self.threshold,
            }
        )
        self._store(job)
        self._run(job, public_key_to_jwk(key))
        return {"id": job.id, "status": job.status}

    def get(self, requester: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.requester != requester:
            raise NotFound("statistics job: no such job for this requester")
        body = job.to_json()
        body["threshold"] = self.threshold
        return body

    def _store(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)

    def _run(self, job: Job, key_jwk: dict[str, Any]) -> None:
        statistic = job.statistic
        key = parse_public_key(key_jwk)
        layout = job.layout
        names = list(statistic.departments)

        def ask(department: str) -> list[int]:
            vector = self.departments.contribute(
                department, statistic.name, job.params, job.id, key_jwk, layout.parties
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
            job.status = "failed"
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
        job.ciphertexts = total
        job.status = "done"
