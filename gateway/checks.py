"""The check pipeline: one yes/no question about one citizen, or a batch of them.

authenticate (the view) → validate → policy → consent → plan → ask each department its
predicate, concurrently, with a timeout → combine (Kleene; a silent department makes the
answer `undetermined`, never `no`) → durable audit append → signed answer.
Denials are audited as well, and their problem carries the audit index.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from tongban.adapters.client import DepartmentClient
from tongban.adapters.coalesce import Coalescer
from tongban.adapters.protocol import MAX_BATCH
from tongban.audit.log import AuditLog
from tongban.policies import Decision, PolicyEnforcer
from tongban.primitives.errors import DepartmentUnavailable, Forbidden, TongbanError
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .answers import AnswerSigner
from .catalog import Catalog, Claim, Term
from .consent import is_consent_id
from .enumeration import EnumerationGuard, ParameterEnumeration
from .metrics import count_check, count_department_call
from .models import (
    MAX_BATCH_SUBJECTS,
    BatchItem,
    BatchRequest,
    BatchResponse,
    BatchSubject,
    CheckRequest,
    CheckResponse,
)
from .ratelimit import RateLimiter
from .services import utc_now

__all__ = ["MAX_BATCH_SUBJECTS", "Checker", "ConsentUse", "PolicyDenied", "ResolvedCheck"]

log = logging.getLogger("tongban.checks")

#: Chunks of a batch in flight per department at once (an adapter's threads: 8 in the
#: production gunicorn configuration).
CHUNKS_IN_FLIGHT = 8
RESULT_WORD = {Tri.TRUE: "yes", Tri.FALSE: "no", Tri.UNKNOWN: "undetermined"}


class PolicyDenied(Forbidden):
    slug = "policy-denied"
    title = "Policy does not allow this check"


class ConsentUse(Protocol):
    """What the pipeline needs from the consent store."""

    def use(
        self, consent_id: str, *, subject_id: str, requester: str, purpose: str, claim: str
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class ResolvedCheck:
    """A :class:`CheckRequest` checked against the catalog: the ID number valid and
    normalised, the claim resolved, the parameters from its enumerations."""

    subject_id: str
    claim: Claim
    purpose: str
    params: dict[str, str]
    consent_id: str | None
    answer_alg: str


def _subject_id(number: str, where: str = "subject") -> str:
    return parse(number).number  # InvalidIdNumber: 422, names the reason, not the number


def _batch_numbers(
    items: Sequence[BatchSubject],
) -> tuple[list[str | None], dict[int, str]]:
    """Valid ID numbers (None where invalid) and, for the invalid ones, the reason."""
    numbers: list[str | None] = []
    invalid: dict[int, str] = {}
    for i, item in enumerate(items):
        try:
            numbers.append(_subject_id(item.id_number, f"subjects[{i}]"))
        except TongbanError as exc:
            numbers.append(None)
            invalid[i] = str(exc.extra.get("reason", exc.slug))
    return numbers, invalid


class Checker:
    def __init__(
        self,
        catalog: Catalog,
        enforcer: PolicyEnforcer,
        consents: ConsentUse,
        departments: DepartmentClient,
        audit: AuditLog,
        answers: AnswerSigner,
        *,
        workers: int = 32,
        timeout: float = 2.0,
        consent_required: Callable[[], TongbanError] | None = None,
        rate_limiter: RateLimiter | None = None,
        enumeration: EnumerationGuard | None = None,
    ) -> None:
        self.catalog = catalog
        # One value of an enumerated parameter per (requester, subject) and window.
        self.enumeration = enumeration
        self.enforcer = enforcer
        self.consents = consents
        self.departments = departments
        self.audit = audit
        self.answers = answers
        self.timeout = timeout
        self.rate_limiter = rate_limiter
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dept")
        self._coalescer = Coalescer(departments.evaluate_batch)
        self._decisions: dict[tuple[str, str, str, str], Decision] = {}
        self._consent_required = consent_required or (
            lambda: Forbidden("consent_id: this purpose needs the subject's consent")
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- validation -------------------------------------------------------------------

    def _resolve(self, claim_name: str, purpose: str, params: Any) -> tuple[Claim, dict[str, str]]:
        """The claim and its parameters, against the catalog (shared by both kinds)."""
        claim = self.catalog.claim(claim_name)
        self.catalog.purpose(purpose)
        return claim, claim.check_params(params)

    def parse(self, body: CheckRequest) -> ResolvedCheck:
        subject_id = _subject_id(body.subject.id_number)
        claim, params = self._resolve(body.claim, body.purpose, body.params)
        return ResolvedCheck(
            subject_id, claim, body.purpose, params, body.consent_id, body.answer_alg
        )

    # --- one check ----------------------------------------------------------------------

    def check(self, requester: str, body: CheckRequest, request_id: str = "") -> CheckResponse:
        req = self.parse(body)
        self._admit(requester, req.claim.name, req.purpose, [req.subject_id], 1)
        decision = self._decide(requester, req.claim, req.purpose)
        base = self._entry(requester, req, decision, request_id)
        if not decision.allowed:
            self._deny(base, req.subject_id, PolicyDenied(f"policy: {decision.reason}"))
        if self.enumeration is not None and req.params:
            # Before consent (a refused value does not use one up) and before any department.
            try:
                self.enumeration.check_one(
                    requester, req.claim.name, req.params, req.claim.param_limits, req.subject_id
                )
            except ParameterEnumeration as exc:
                self._deny(base, req.subject_id, exc)
        basis = self._basis(requester, req, req.consent_id, base)
        results = self._ask(req.claim, req.subject_id, req.params)
        word = RESULT_WORD[req.claim.combine([r for _, r in results])]
        entry = {
            **base,
            **basis,
            "result": word,
            "departments": [[d, r.value] for d, r in results],
        }
        index = self.audit.append(entry, req.subject_id)
        count_check(req.claim.name, req.purpose, word)
        token = self.answers.sign(
            requester,
            {
                "sub": self.answers.pairwise(requester, req.subject_id),
                "claim": req.claim.name,
                "purpose": req.purpose,
                "params": req.params,
                "result": word,
                "policy_version": decision.policy_version,
                **basis,
                "audit_index": index,
            },
            req.answer_alg,
        )
        return CheckResponse(result=word, answer=token, audit_index=index)

    def _admit(
        self, requester: str, claim: str, purpose: str, subjects: list[str], cost: int
    ) -> None:
        """Rate limits, before policy, consent or any department: a refusal (429) is
        counted but not audited (see gateway/ratelimit.py) and never signed."""
        if self.rate_limiter is None:
            return
        try:
            self.rate_limiter.admit(requester, subjects, cost=cost)
        except TongbanError:
            count_check(claim, purpose, "rate_limited")
            raise

    def _decide(self, requester: str, claim: Claim, purpose: str) -> Decision:
        # Decisions depend only on these and the policy version: cache them per version.
        key = (requester, claim.name, purpose, self.enforcer.version)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        decision = self._decide_uncached(requester, claim, purpose)
        if len(self._decisions) >= 4096:
            self._decisions.clear()
        self._decisions[key] = decision
        return decision

    def _decide_uncached(self, requester: str, claim: Claim, purpose: str) -> Decision:
        decision = self.enforcer.decide(requester, claim.name, claim.departments, purpose)
        if decision.allowed and purpose not in claim.purposes:
            # The catalog bounds policy: a claim never serves a purpose it was not made for.
            return Decision(False, None, decision.policy_version, "purpose_not_served_by_claim")
        return decision

    def _entry(
        self, requester: str, req: ResolvedCheck, decision: Decision, request_id: str
    ) -> dict[str, Any]:
        return {
            "kind": "check",
            "time": utc_now(),
            "requester": requester,
            "claim": req.claim.name,
            "purpose": req.purpose,
            "params": req.params,
            "decision": {
                "allowed": decision.allowed,
                "rule": list(decision.matched_rule or ()),
                "policy_version": decision.policy_version,
                "reason": decision.reason,
            },
            "request_id": request_id,
        }

    def _deny(
        self, entry: dict[str, Any], subject_id: str | None, error: TongbanError, count: int = 1
    ) -> None:
        """Record a refusal durably, then raise it carrying its audit index. ``count``:
        the checks refused (a batch's subjects; its entry has no subject)."""
        index = self.audit.append({**entry, "result": "denied", "error": error.slug}, subject_id)
        count_check(entry["claim"], entry["purpose"], "denied", count)
        error.extra["audit_index"] = index
        raise error

    def _basis(
        self, requester: str, req: ResolvedCheck, consent_id: str | None, entry: dict[str, Any]
    ) -> dict[str, str]:
        legal_basis = self.enforcer.legal_basis(req.purpose)
        if legal_basis is not None:
            return {"legal_basis": legal_basis}
        if consent_id is None:
            self._deny(entry, req.subject_id, self._consent_required())
        assert consent_id is not None
        try:
            self.consents.use(
                consent_id,
                subject_id=req.subject_id,
                requester=requester,
                purpose=req.purpose,
                claim=req.claim.name,
            )
        except TongbanError as exc:
            # Only a well-formed consent id goes into the log: free text could be personal data.
            recorded = {"consent_id": consent_id} if is_consent_id(consent_id) else {}
            self._deny({**entry, **recorded}, req.subject_id, exc)
        return {"consent_id": consent_id}

    def _ask(self, claim: Claim, subject_id: str, params: dict[str, str]) -> list[tuple[str, Tri]]:
        """Each term's department, concurrently, in term order; a department that fails
        or is late counts as UNKNOWN for this check."""
        futures = []
        for t in claim.terms:
            call = t.call(subject_id, params)
            futures.append((t.department, self._pool.submit(
                self._coalescer.evaluate, t.department, call.predicate, call.params, call.subject
            )))  # fmt: skip
        out: list[tuple[str, Tri]] = []
        for department, future in futures:
            try:
                result = future.result(timeout=self.timeout * 5 + 1)
                count_department_call(department, result.value)
            except DepartmentUnavailable:
                count_department_call(department, "unavailable")
                result = Tri.UNKNOWN
            except FutureTimeout:
                count_department_call(department, "timeout")
                result = Tri.UNKNOWN
            except TongbanError as exc:
                log.error("department %s: %s", department, exc.slug)
                count_department_call(department, "refused")
                result = Tri.UNKNOWN
            out.append((department, result))
        return out

    # --- batch --------------------------------------------------------------------------

    def batch(self, requester: str, body: BatchRequest, request_id: str = "") -> BatchResponse:
        claim, params = self._resolve(body.claim, body.purpose, body.params)
        purpose, alg, items = body.purpose, body.answer_alg, body.subjects
        numbers, invalid = _batch_numbers(items)
        self._admit(requester, claim.name, purpose, [n for n in numbers if n], len(items))
        decision = self._decide(requester, claim, purpose)
        req = ResolvedCheck("", claim, purpose, params, None, alg)
        base = self._entry(requester, req, decision, request_id)
        if not decision.allowed:
            # The same refusal as one check's: audited (one entry, no subject) and counted.
            policy = PolicyDenied(f"policy: {decision.reason}")
            self._deny({**base, "batch": len(items)}, None, policy, len(items))
        legal_basis = self.enforcer.legal_basis(purpose)
        enumerated = self._batch_enumeration(requester, claim, params, numbers)
        basis: list[dict[str, str] | str] = []
        for i, (item, number) in enumerate(zip(items, numbers, strict=True)):
            if number is None:
                basis.append(f"invalid-id-number:{invalid[i]}")
            elif i in enumerated:
                basis.append(ParameterEnumeration.slug)
            elif legal_basis is not None:
                basis.append({"legal_basis": legal_basis})
            else:
                basis.append(self._batch_consent(requester, claim, purpose, number, item))
        askable = [n for n, b in zip(numbers, basis, strict=True) if n and isinstance(b, dict)]
        answers = self._ask_many(claim, askable, params)
        results = self._audit_batch(base, numbers, basis, answers, invalid)
        for word, count in Counter(r["result"] for r in results).items():
            count_check(claim.name, purpose, word, count)
        signed = []
        for r, number in zip(results, numbers, strict=True):
            signed.append({
                "sub": self.answers.pairwise(requester, number) if number else None,
                "result": r["result"],
                "audit_index": r["audit_index"],
            })  # fmt: skip
        token = self.answers.sign(
            requester,
            {
                "claim": claim.name,
                "purpose": purpose,
                "params": params,
                "policy_version": decision.policy_version,
                "results": signed,
                **({"legal_basis": legal_basis} if legal_basis else {}),
            },
            alg,
        )
        return BatchResponse(results=[BatchItem(**r) for r in results], answer=token)

    def _audit_batch(
        self,
        base: dict[str, Any],
        numbers: Sequence[str | None],
        basis: Sequence[dict[str, str] | str],
        answers: Mapping[str, Tri],
        invalid: Mapping[int, str],
    ) -> list[dict[str, Any]]:
        """Append a batch's entries in one transaction and return its per-item results,
        each with its ``audit_index``. Every subject that reached policy has an entry of its
        own; the subjects that were not valid ID numbers share one summary entry, how many
        and why, never the numbers (a batch of garbage is one entry, not 10,000)."""
        results: list[dict[str, Any]] = []
        prepared = []
        for i, (number, b) in enumerate(zip(numbers, basis, strict=True)):
            if number is None:
                results.append({"index": i, "result": "invalid", "reason": invalid[i]})
                continue
            if isinstance(b, dict):
                word = RESULT_WORD[answers[number]]
                entry = {**base, **b, "result": word, "batch_item": i}
            else:
                word = "denied"
                entry = {**base, "result": word, "error": b, "batch_item": i}
            prepared.append(self.audit.prepare(entry, number))
            results.append({"index": i, "result": word})
            if not isinstance(b, dict):
                results[-1]["reason"] = b.split(":")[0]
        if invalid:
            reasons = dict(sorted(Counter(invalid.values()).items()))
            summary = {**base, "result": "invalid", "error": "invalid-id-number",
                       "batch_invalid": {"count": len(invalid), "reasons": reasons}}  # fmt: skip
            prepared.append(self.audit.prepare(summary, None))
        indexes = self.audit.append_prepared(prepared)
        summary_index = indexes[-1] if invalid else None
        item_indexes = iter(indexes)
        for r in results:
            r["audit_index"] = summary_index if r["result"] == "invalid" else next(item_indexes)
        return results

    def _batch_enumeration(
        self, requester: str, claim: Claim, params: dict[str, str], numbers: list[str | None]
    ) -> set[int]:
        """Positions refused for asking another value of an enumerated parameter."""
        if self.enumeration is None or not params:
            return set()
        valid = [(i, n) for i, n in enumerate(numbers) if n is not None]
        refused = self.enumeration.admit(
            requester, claim.name, params, claim.param_limits, [n for _, n in valid]
        )
        return {valid[j][0] for j in refused}

    def _batch_consent(
        self, requester: str, claim: Claim, purpose: str, number: str, item: BatchSubject
    ) -> dict[str, str] | str:
        consent_id = item.consent_id
        if consent_id is None:
            return self._consent_required().slug
        try:
            self.consents.use(
                consent_id, subject_id=number, requester=requester, purpose=purpose,
                claim=claim.name,
            )  # fmt: skip
        except TongbanError as exc:
            return exc.slug
        return {"consent_id": consent_id}

    def _ask_many(
        self, claim: Claim, subjects: Sequence[str], params: dict[str, str]
    ) -> dict[str, Tri]:
        unique = list(dict.fromkeys(subjects))
        if not unique:
            return {}
        per_term: list[list[Tri]] = []
        for term in claim.terms:
            call = term.call(unique[0], params)
            chunks = [unique[i : i + MAX_BATCH] for i in range(0, len(unique), MAX_BATCH)]

            def submit(
                i: int,
                term: Term = term,
                call: PredicateCall = call,
                chunks: list[list[str]] = chunks,
            ) -> Future[list[Tri]]:
                return self._pool.submit(
                    self.departments.evaluate_batch, term.department, call.predicate,
                    call.params, chunks[i],
                )  # fmt: skip

            # A sliding window of chunks in flight per department: a department answering
            # from its own (slower) database is never sent more chunks than it works on
            # at once, so no chunk times out queueing behind the others.
            futures = {i: submit(i) for i in range(min(CHUNKS_IN_FLIGHT, len(chunks)))}
            values: list[Tri] = []
            for i, chunk in enumerate(chunks):
                try:
                    values.extend(futures.pop(i).result(timeout=self.timeout * 5 + 1))
                except (TongbanError, FutureTimeout):
                    values.extend([Tri.UNKNOWN] * len(chunk))
                if i + CHUNKS_IN_FLIGHT < len(chunks):
                    futures[i + CHUNKS_IN_FLIGHT] = submit(i + CHUNKS_IN_FLIGHT)
            per_term.append(values)
        return {s: claim.combine([values[i] for values in per_term]) for i, s in enumerate(unique)}

    # --- discovery ------------------------------------------------------------------------

    def allowed(self, requester: str) -> list[dict[str, Any]]:
        """The claims, purposes and parameters this requester may use."""
        out = []
        for claim in self.catalog.claims.values():
            purposes = [
                p for p in sorted(claim.purposes)
                if self.enforcer.decide(requester, claim.name, claim.departments, p).allowed
            ]  # fmt: skip
            if purposes:
                described = claim.describe()
                described["purposes"] = [
                    {"name": p, "consent_required": self.enforcer.legal_basis(p) is None,
                     "legal_basis": self.enforcer.legal_basis(p)}
                    for p in purposes
                ]  # fmt: skip
                out.append(described)
        return out
