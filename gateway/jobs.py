"""Policy for jobs: encrypted statistics and federated training, decided like claims.

A job is not a question about one citizen, so consent does not apply; but who may run which
statistic or train which model is still the administrators' decision, kept in the same
Casbin policy, changed through the same two-person rule and audited the same way. A job is
named as a policy *object* beside the claims:

- ``statistic:<name>`` for each statistic of the registry (:mod:`federation.statistics`),
  with the purpose ``official_statistics``;
- ``federation:horizontal`` and ``federation:vertical`` for training, with the purpose
  ``model_training``.

A rule such as ``p, analyst, *, statistic:births_by_district_year, official_statistics,
allow`` grants one; a job is allowed only if every department it involves allows it, and
a denial is audited before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tongban.audit.sink import AuditSink
from tongban.federation.statistics import REGISTRY, StatisticsRegistry
from tongban.policies import Decision, PolicyEnforcer
from tongban.primitives.errors import Forbidden

__all__ = [
    "STATISTICS_PURPOSE",
    "TRAINING_PURPOSE",
    "JobDenied",
    "JobObject",
    "JobPolicy",
    "decision_record",
    "declared_jobs",
    "statistic_object",
]

STATISTICS_PURPOSE = "official_statistics"
TRAINING_PURPOSE = "model_training"


class JobDenied(Forbidden):
    slug = "job-denied"
    title = "Policy does not allow this job"


@dataclass(frozen=True, slots=True)
class JobObject:
    """A policy object for a kind of job: what a rule may name, with whom and why."""

    name: str
    title: str
    departments: tuple[str, ...]
    purposes: frozenset[str]


def statistic_object(name: str) -> str:
    return f"statistic:{name}"


def declared_jobs(registry: StatisticsRegistry = REGISTRY) -> dict[str, JobObject]:
    """Every job object a policy rule may name: one per registered statistic, and the two
    kinds of federated training."""
    jobs = {
        statistic_object(s.name): JobObject(
            statistic_object(s.name), s.title, s.departments, frozenset({STATISTICS_PURPOSE})
        )
        for s in registry
    }
    training = {
        "federation:horizontal": JobObject(
            "federation:horizontal",
            "Horizontal federated training among departments of one kind",
            ("health",),
            frozenset({TRAINING_PURPOSE}),
        ),
        "federation:vertical": JobObject(
            "federation:vertical",
            "Vertical federated training across departments",
            ("health", "hrss", "civil"),
            frozenset({TRAINING_PURPOSE}),
        ),
    }
    return jobs | training


class JobPolicy:
    """Decides jobs against the live policy; audits every denial before raising it."""

    def __init__(self, enforcer: PolicyEnforcer, audit: AuditSink | None = None) -> None:
        self.enforcer = enforcer
        self.audit = audit

    def authorize(
        self, requester: str, obj: str, departments: Sequence[str], purpose: str
    ) -> Decision:
        """The allowing decision (for the caller's audit entry), or :class:`JobDenied`
        after the denial is durably audited."""
        decision = self.enforcer.decide(requester, obj, departments, purpose)
        if decision.allowed:
            return decision
        index = None
        if self.audit is not None:
            index = self.audit.append(
                {
                    "kind": "job_denied",
                    "requester": requester,
                    "object": obj,
                    "purpose": purpose,
                    "departments": list(departments),
                    "reason": decision.reason,
                    "rule": list(decision.matched_rule) if decision.matched_rule else None,
                    "policy_version": decision.policy_version,
                }
            )
        raise JobDenied(f"policy: {decision.reason}", audit_index=index)


def decision_record(decision: Decision) -> dict[str, Any]:
    """What an allowed job's audit entry records of the decision."""
    return {
        "rules": [list(r) for r in decision.matched_rules],
        "policy_version": decision.policy_version,
    }
