"""Errors the policy package raises, as branches of the one tongban error tree.

    TongbanError
    ├── BadRequest
    │   └── InvalidPolicy          400 a rule, legal basis or change that cannot be accepted
    ├── Forbidden
    │   └── TwoPersonRule          403 the proposer tried to approve their own change
    ├── NotFound
    │   └── UnknownChange          404
    ├── Conflict
    │   ├── ChangeNotPending       409 already approved or rejected
    │   └── ChangeConflict         409 the change no longer applies to the current policy
    └── StoreUnavailable
        └── AuditFailed            503 the audit append failed, so nothing was changed

Details name the field and what was expected; they never echo request values, so a
decision path can log them without leaking who asked about whom.
"""

from __future__ import annotations

from tongban.primitives.errors import BadRequest, Conflict, Forbidden, NotFound, StoreUnavailable

__all__ = [
    "AuditFailed",
    "ChangeConflict",
    "ChangeNotPending",
    "InvalidPolicy",
    "TwoPersonRule",
    "UnknownChange",
]


class InvalidPolicy(BadRequest):
    slug = "invalid-policy"
    title = "Invalid policy or policy change"


class TwoPersonRule(Forbidden):
    slug = "two-person-rule"
    title = "A policy change must be approved by a second administrator"


class UnknownChange(NotFound):
    slug = "unknown-policy-change"
    title = "Unknown policy change"


class ChangeNotPending(Conflict):
    slug = "policy-change-not-pending"
    title = "The policy change was already approved or rejected"


class ChangeConflict(Conflict):
    slug = "policy-change-conflict"
    title = "The policy change does not apply to the current policy"


class AuditFailed(StoreUnavailable):
    slug = "audit-failed"
    title = "The audit log did not accept the event; nothing was changed"
