"""The enforcer wrapper: Casbin behind a fail-closed, thread-safe, versioned decision API.

Why a wrapper: Casbin raises on evaluator problems (an ``eval()`` matcher over an empty
policy raises ``RuntimeError``; a bad matcher raises from its expression evaluator), and a
raise in the check pipeline must never turn into an answer. Here every exception becomes a
denial with reason ``evaluator_error``. Casbin enforcers also mutate role-manager caches while
enforcing and are not safe under concurrent reload, so each loaded policy is compiled into
an immutable :class:`CompiledPolicy` and a reload swaps the whole snapshot in one
assignment. A claim is decided against one snapshot, so its departments never see two
policy versions.

Enforcement itself is serialised process-wide, not per snapshot: Casbin re-parses the
matcher with ``ast.parse`` on every call, and CPython 3.11 keeps the AST constructor's
recursion depth in interpreter-wide state, so two threads parsing at once can fail with
``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905). The
concurrency test caught exactly that while an old and a new snapshot were both in use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import casbin
from casbin.persist import Adapter

from .errors import InvalidPolicy
from .rules import ALL_DOMAINS, ALLOW, DENY, Policy, Rule

__all__ = ["CompiledPolicy", "Decision", "PolicyEnforcer", "Reason", "compile_policy"]

log = logging.getLogger(__name__)

_CASBIN_LOGGERS = ("casbin", "casbin.policy", "casbin.role", "casbin.enforcer")
"""Casbin logs the whole model and every rule at INFO as it loads a policy, and then
disables its own loggers altogether (warnings included) unless ``enable_log``."""


def _casbin_warnings_only() -> None:
    """Casbin's own loggers at WARNING, and enabled: its problems are still seen, the
    policy dump is not (:meth:`PolicyEnforcer.load` logs a one-line summary instead)."""
    for name in _CASBIN_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.disabled = False


_EVALUATION_LOCK = threading.Lock()
"""Serialises every Casbin evaluation in the process (see the module docstring)."""


class Reason(StrEnum):
    """Why a decision came out as it did. Stable strings: they go into audit entries."""

    ALLOWED = "allowed"
    NO_MATCHING_RULE = "no_matching_rule"  # default deny: no allow rule matched
    NEGATIVE_LIST = "negative_list"  # a deny rule matched; it wins over any allow
    EVALUATOR_ERROR = "evaluator_error"  # Casbin raised or answered nonsense: fail closed
    INVALID_REQUEST = "invalid_request"  # empty, non-string, "*", or a role name as requester
    NO_DEPARTMENTS = "no_departments"  # a claim touching no department is not vacuously true


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision. ``matched_rule`` is the rule Casbin reports as deciding (for a
    denial by the negative list, the deny rule; ``None`` for a default deny). For an allowed
    claim, ``matched_rules`` lists the allow rule of each department, in order, and
    ``matched_rule`` is the first of them; a denied claim is the denying department's
    decision."""

    allowed: bool
    matched_rule: tuple[str, ...] | None
    policy_version: str
    reason: str
    matched_rules: tuple[tuple[str, ...], ...] = ()


def _domain_match(domain: str, pattern: str) -> bool:
    """A role granted in domain ``*`` holds in every department."""
    return pattern in (ALL_DOMAINS, domain)


class _RulesAdapter(Adapter):  # type: ignore[misc]  # casbin is untyped
    """Loads a fixed set of rules into a Casbin model; nothing is ever saved through it."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = rules

    def load_policy(self, model: Any) -> None:
        for rule in self._rules:
            section = model.model.get(rule.ptype[0], {})
            if rule.ptype not in section:
                # A grouping the model cannot evaluate would silently drop, e.g., the
                # negative list's claim group: refuse the policy instead.
                raise InvalidPolicy(f"rule {rule.ptype}: not defined by the model")
            section[rule.ptype].policy.append(list(rule.values))


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    """A policy and the Casbin enforcer built from it. Never replaced in place: a reload
    builds a new one. (Casbin's role managers still fill caches as they read, one more reason
    enforcement holds :data:`_EVALUATION_LOCK`.)"""

    policy: Policy
    casbin: Any
    role_only_names: frozenset[str] = frozenset()


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Build a Casbin enforcer for ``policy``; :class:`InvalidPolicy` if Casbin refuses it.
    Rules load in sorted order, so the same policy always yields the same matched rules."""
    _casbin_warnings_only()
    try:
        model = casbin.Enforcer.new_model(text=policy.model_text)
        enforcer = casbin.Enforcer(model, _RulesAdapter(sorted(policy.rules)))
        enforcer.add_named_domain_matching_func("g", _domain_match)
    except InvalidPolicy:
        raise
    except Exception as exc:
        raise InvalidPolicy("policy: the Casbin model or rules could not be loaded") from exc
    finally:
        _casbin_warnings_only()  # the Enforcer just disabled them again
    grants = [r.values for r in policy.rules if r.ptype == "g" and len(r.values) > 1]
    # Role names that no g line grants to a requester of the same name (the demo's client
    # "analyst" holds role "analyst" explicitly; no client is granted "insurer" that way).
    roles = frozenset(g[1] for g in grants) - {g[0] for g in grants}
    return CompiledPolicy(policy, enforcer, roles)


def _log_loaded(policy: Policy, previous: str | None) -> None:
    """One line per policy taken into force (a reload of the same version, DEBUG): its
    version and how many rules and legal bases it has, never the rules themselves."""
    level = logging.DEBUG if policy.version == previous else logging.INFO
    log.log(
        level,
        "policy %s loaded: %d rules, %d legal bases",
        policy.version,
        len(policy.rules),
        len(policy.legal_bases),
    )


def _valid(value: object) -> bool:
    return isinstance(value, str) and value not in ("", ALL_DOMAINS) and "," not in value


class PolicyEnforcer:
    """Decides requests against the current policy snapshot; reloadable while in use."""

    def __init__(self, policy: Policy | CompiledPolicy) -> None:
        self._current = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
        _log_loaded(self._current.policy, None)

    @property
    def policy(self) -> Policy:
        return self._current.policy

    @property
    def version(self) -> str:
        return self._current.policy.version

    def load(self, policy: Policy | CompiledPolicy) -> str:
        """Swap in a new policy (compiling it first, outside any lock) and return its version.
        Decisions in flight finish on the snapshot they started with."""
        compiled = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
        previous, self._current = self._current, compiled  # one assignment: atomic for readers
        _log_loaded(compiled.policy, previous.policy.version)
        return compiled.policy.version

    def legal_basis(self, purpose: object) -> str | None:
        """The declared statutory basis for ``purpose``, or ``None``: consent is needed."""
        if not isinstance(purpose, str):
            return None
        return self._current.policy.legal_bases.get(purpose)

    def enforce(self, requester: str, department: str, claim: str, purpose: str) -> Decision:
        """One Casbin request: may ``requester`` ask ``claim`` of ``department`` for
        ``purpose``? Never raises."""
        return _enforce(self._current, requester, department, claim, purpose)

    def decide(
        self, requester: str, claim_name: str, departments: Sequence[str], purpose: str
    ) -> Decision:
        """Decide a whole claim: allowed only if every department it touches allows; the
        first denial is returned as is. Never raises."""
        snapshot = self._current
        version = snapshot.policy.version
        try:
            asked = list(dict.fromkeys(departments))
        except Exception:  # unhashable or non-iterable input: still an answer, not a raise
            return Decision(False, None, version, Reason.INVALID_REQUEST)
        if not asked:
            return Decision(False, None, version, Reason.NO_DEPARTMENTS)
        rules: list[tuple[str, ...]] = []
        for department in asked:
            decision = _enforce(snapshot, requester, department, claim_name, purpose)
            if not decision.allowed:
                return decision
            assert decision.matched_rule is not None  # _enforce guarantees it for allows
            rules.append(decision.matched_rule)
        return Decision(True, rules[0], version, Reason.ALLOWED, tuple(rules))


def _enforce(
    snapshot: CompiledPolicy, requester: str, department: str, claim: str, purpose: str
) -> Decision:
    version = snapshot.policy.version
    # "*" is a wildcard inside the policy; as a request value it would match grants meant
    # for "every department", so it is refused along with empty or non-string values.
    if not all(_valid(v) for v in (requester, department, claim, purpose)):
        return Decision(False, None, version, Reason.INVALID_REQUEST)
    # In Casbin RBAC a name holds its own permissions, so a client registered under a role's
    # name would hold that role without any g line granting it. Refuse such requesters.
    # (``role_only_names`` holds only role names not themselves granted to a requester.)
    if requester in snapshot.role_only_names:
        return Decision(False, None, version, Reason.INVALID_REQUEST)
    try:
        with _EVALUATION_LOCK:
            allowed, explain = snapshot.casbin.enforce_ex(requester, department, claim, purpose)
        rule = tuple(str(v) for v in explain) if explain else None
        if allowed is True and rule is not None and rule[-1] == ALLOW:
            return Decision(True, rule, version, Reason.ALLOWED, (rule,))
        if allowed is False and rule is not None and rule[-1] == DENY:
            return Decision(False, rule, version, Reason.NEGATIVE_LIST, (rule,))
        if allowed is False and rule is None:
            return Decision(False, None, version, Reason.NO_MATCHING_RULE)
        # Anything else (an allow without an allow rule, a non-bool) is not a result we can
        # explain, so it is not a result we act on.
        raise RuntimeError("casbin returned an unexplained result")
    except Exception:
        # Request values are client ids, departments, claim and purpose names: no personal
        # data, so they may be logged for the operator.
        log.warning(
            "policy evaluator error (version %s) for %s/%s/%s/%s",
            version,
            requester,
            department,
            claim,
            purpose,
            exc_info=True,
        )
        return Decision(False, None, version, Reason.EVALUATOR_ERROR)
