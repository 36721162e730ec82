"""Policy changes as typed values, their JSON form, and how one applies to a policy.

Why pure: the same function validates a change when it is proposed and re-applies it when it
is approved, against whatever the policy has become in between. A change is a diff that the
second administrator reviewed; if it no longer applies exactly (a rule to add is already
there, a rule to remove is gone), it is refused rather than silently meaning something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import ChangeConflict, InvalidPolicy
from .rules import ClaimCatalog, Rule, check_legal_basis, check_rule

__all__ = ["BasisEdit", "BasisOp", "Change", "RuleEdit", "RuleOp", "apply_change"]

_MAX_EDITS = 200


class RuleOp(StrEnum):
    ADD = "add"
    REMOVE = "remove"


class BasisOp(StrEnum):
    SET = "set"
    UNSET = "unset"


@dataclass(frozen=True, slots=True)
class RuleEdit:
    op: RuleOp
    rule: Rule


@dataclass(frozen=True, slots=True)
class BasisEdit:
    op: BasisOp
    purpose: str
    basis: str | None = None  # required for SET, absent for UNSET


@dataclass(frozen=True, slots=True)
class Change:
    """What an administrator proposes: rule additions/removals and legal-basis edits."""

    rules: tuple[RuleEdit, ...] = ()
    legal_bases: tuple[BasisEdit, ...] = ()

    @classmethod
    def add(cls, *lines: str) -> Change:
        """Shorthand: a change adding the given Casbin CSV lines."""
        return cls(tuple(RuleEdit(RuleOp.ADD, Rule.parse(line)) for line in lines))

    @classmethod
    def remove(cls, *lines: str) -> Change:
        """Shorthand: a change removing the given Casbin CSV lines."""
        return cls(tuple(RuleEdit(RuleOp.REMOVE, Rule.parse(line)) for line in lines))

    def to_json(self) -> dict[str, Any]:
        """JSON-able form, used in the store and in audit events (no personal data: rules
        name roles, client ids, departments, claims and purposes)."""
        return {
            "rules": [{"op": e.op.value, "rule": e.rule.as_list()} for e in self.rules],
            "legal_bases": [
                {"op": e.op.value, "purpose": e.purpose}
                | ({"basis": e.basis} if e.basis is not None else {})
                for e in self.legal_bases
            ],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Change:
        """Parse and shape-check the JSON form; :class:`InvalidPolicy` names the bad field."""
        if not isinstance(doc, Mapping) or set(doc) - {"rules", "legal_bases"}:
            raise InvalidPolicy("change: expected an object with 'rules' and/or 'legal_bases'")
        raw_rules, raw_bases = doc.get("rules", []), doc.get("legal_bases", [])
        if not isinstance(raw_rules, list) or not isinstance(raw_bases, list):
            raise InvalidPolicy("change.rules, change.legal_bases: expected arrays")
        rules = []
        for i, item in enumerate(raw_rules):
            line = item.get("rule") if isinstance(item, Mapping) else None
            op = item.get("op") if isinstance(item, Mapping) else None
            if op not in set(RuleOp) or not isinstance(line, list) or not line:
                raise InvalidPolicy(f"change.rules[{i}]: expected {{op: add|remove, rule: [..]}}")
            if not all(isinstance(v, str) for v in line):
                raise InvalidPolicy(f"change.rules[{i}].rule: expected strings")
            rules.append(RuleEdit(RuleOp(op), Rule(line[0], tuple(line[1:]))))
        bases = []
        for i, item in enumerate(raw_bases):
            if not isinstance(item, Mapping) or item.get("op") not in set(BasisOp):
                raise InvalidPolicy(f"change.legal_bases[{i}].op: expected set|unset")
            purpose, basis = item.get("purpose"), item.get("basis")
            if not isinstance(purpose, str) or not (basis is None or isinstance(basis, str)):
                raise InvalidPolicy(f"change.legal_bases[{i}]: expected string purpose, basis")
            bases.append(BasisEdit(BasisOp(item["op"]), purpose, basis))
        return cls(tuple(rules), tuple(bases))


def apply_change(
    rules: frozenset[Rule],
    legal_bases: Mapping[str, str],
    change: Change,
    catalog: ClaimCatalog,
) -> tuple[frozenset[Rule], dict[str, str]]:
    """The stored rules and legal bases after ``change``. :class:`InvalidPolicy` for a change
    that is malformed or names something the catalog does not know; :class:`ChangeConflict`
    for one that does not apply exactly to the given state."""
    edits = len(change.rules) + len(change.legal_bases)
    if edits == 0:
        raise InvalidPolicy("change: expected at least one edit")
    if edits > _MAX_EDITS:
        raise InvalidPolicy(f"change: at most {_MAX_EDITS} edits")
    if len({e.rule for e in change.rules}) != len(change.rules):
        raise InvalidPolicy("change.rules: each rule may appear once")
    if len({e.purpose for e in change.legal_bases}) != len(change.legal_bases):
        raise InvalidPolicy("change.legal_bases: each purpose may appear once")

    after = _apply_rules(rules, change.rules)
    groups = {r.values[1] for r in after if r.ptype == "g2" and len(r.values) == 2}
    for edit in change.rules:
        if edit.op is RuleOp.ADD:
            check_rule(edit.rule, catalog, groups)
    return after, _apply_bases(legal_bases, change.legal_bases, catalog)


def _apply_rules(rules: frozenset[Rule], edits: tuple[RuleEdit, ...]) -> frozenset[Rule]:
    after = set(rules)
    for i, edit in enumerate(edits):
        if edit.op is RuleOp.ADD:
            if edit.rule in after:
                raise ChangeConflict(f"change.rules[{i}]: the rule to add is already present")
            after.add(edit.rule)
        else:
            if edit.rule not in after:
                raise ChangeConflict(f"change.rules[{i}]: the rule to remove is not present")
            after.discard(edit.rule)
    return frozenset(after)


def _apply_bases(
    legal_bases: Mapping[str, str], edits: tuple[BasisEdit, ...], catalog: ClaimCatalog
) -> dict[str, str]:
    bases = dict(legal_bases)
    for i, b in enumerate(edits):
        if b.op is BasisOp.SET:
            if b.basis is None:
                raise InvalidPolicy(f"change.legal_bases[{i}].basis: required for set")
            check_legal_basis(b.purpose, b.basis, catalog)
            if bases.get(b.purpose) == b.basis:
                raise ChangeConflict(f"change.legal_bases[{i}]: already declared as given")
            bases[b.purpose] = b.basis
        else:
            if b.basis is not None:
                raise InvalidPolicy(f"change.legal_bases[{i}].basis: not allowed for unset")
            if b.purpose not in bases:
                raise ChangeConflict(f"change.legal_bases[{i}]: no legal basis is declared")
            del bases[b.purpose]
    return bases
