"""Policy data: rule lines, legal bases, the catalog view they are checked against, and the
policy version.

Why a separate module: the enforcer, the store and the change approval all need the same
notion of "a policy" and of its version, and none of them should need Casbin or a database
to compute it. A :class:`Policy` is an immutable value; its version is the SM3 of a canonical
serialisation, so two processes holding the same rules agree on the version, and any change
(a rule, a legal basis, the model text, or a catalog flag that feeds a derived group) moves it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Protocol

from tongban.primitives.gm import sm3

from .errors import InvalidPolicy

__all__ = [
    "ALLOW",
    "ALL_DOMAINS",
    "DENY",
    "FERTILITY_GROUP",
    "RULE_ARITY",
    "ClaimCatalog",
    "ClaimInfo",
    "JobInfo",
    "Policy",
    "Rule",
    "build_policy",
    "check_legal_basis",
    "check_rule",
    "default_legal_bases",
    "default_model_text",
    "default_rules",
    "derived_rules",
    "policy_version",
]

ALLOW = "allow"
DENY = "deny"
ALL_DOMAINS = "*"
FERTILITY_GROUP = "fertility_derived"
"""The claim group derived from the catalog's ``fertility_derived`` flags; reserved."""

RULE_ARITY: Mapping[str, int] = MappingProxyType({"p": 5, "g": 3, "g2": 2})
"""Known rule types and their number of values; the store holds at most six (v0..v5)."""

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
# Grounds other than consent only: PIPL art. 13(1)(1) is consent, which "no basis" means.
_STATUTORY = re.compile(r"PIPL art\. 13\(1\)\([2-7]\)(; [^\x00-\x1f;]{1,200}){0,4}")


class ClaimInfo(Protocol):
    """What policies need to know of a claim (``gateway.catalog.Claim`` fits)."""

    @property
    def fertility_derived(self) -> bool: ...

    @property
    def departments(self) -> tuple[str, ...]: ...


class JobInfo(Protocol):
    """What policies need to know of a job object (``gateway.jobs.JobObject`` fits)."""

    @property
    def departments(self) -> tuple[str, ...]: ...

    @property
    def purposes(self) -> frozenset[str]: ...


class ClaimCatalog(Protocol):
    """What policies need of the claim catalog. A Protocol, because ``policies`` may not
    import ``gateway``; ``gateway.catalog.Catalog`` satisfies it structurally."""

    @property
    def claims(self) -> Mapping[str, ClaimInfo]: ...

    @property
    def purposes(self) -> Mapping[str, object]: ...

    @property
    def jobs(self) -> Mapping[str, JobInfo]:
        """Job objects (``statistic:<name>``, ``federation:<kind>``) a rule may name."""
        ...


@dataclass(frozen=True, slots=True, order=True)
class Rule:
    """One Casbin policy or grouping line: ``ptype`` (``p``, ``g``, ``g2``) and its values."""

    ptype: str
    values: tuple[str, ...]

    @classmethod
    def of(cls, ptype: str, *values: str) -> Rule:
        return cls(ptype, tuple(values))

    @classmethod
    def parse(cls, line: str) -> Rule:
        """Parse a Casbin CSV line such as ``p, insurer, *, fertility_derived, underwriting,
        deny``. Values never contain commas (see :func:`check_rule`), so a split suffices."""
        ptype, *values = (part.strip() for part in line.split(","))
        return cls(ptype, tuple(values))

    def line(self) -> str:
        return ", ".join((self.ptype, *self.values))

    def as_list(self) -> list[str]:
        return [self.ptype, *self.values]


@dataclass(frozen=True, eq=False)
class Policy:
    """Everything a decision depends on. ``rules`` includes derived rules; ``stored`` is the
    part that lives in the store and that administrators change."""

    model_text: str
    stored: frozenset[Rule]
    derived: frozenset[Rule]
    legal_bases: Mapping[str, str]
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "legal_bases", MappingProxyType(dict(self.legal_bases)))
        object.__setattr__(
            self, "version", policy_version(self.model_text, self.rules, self.legal_bases)
        )

    @property
    def rules(self) -> frozenset[Rule]:
        return self.stored | self.derived


def policy_version(model_text: str, rules: Iterable[Rule], legal_bases: Mapping[str, str]) -> str:
    """Lowercase hex SM3 over the canonical JSON of model text, sorted rule lines and sorted
    legal bases. Sorting makes it independent of load order; JSON (not a joined string) keeps
    field boundaries unambiguous, so different policies cannot serialise alike."""
    doc = {
        "model": model_text,
        "rules": [r.as_list() for r in sorted(set(rules))],
        "legal_bases": sorted([p, b] for p, b in legal_bases.items()),
    }
    text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return sm3(text.encode("utf-8")).hex()


def derived_rules(catalog: ClaimCatalog) -> frozenset[Rule]:
    """``g2, <claim>, fertility_derived`` for every claim the catalog flags, so the negative
    list cannot drift from the catalog."""
    return frozenset(
        Rule.of("g2", name, FERTILITY_GROUP)
        for name, claim in catalog.claims.items()
        if claim.fertility_derived
    )


def build_policy(
    stored: Iterable[Rule],
    legal_bases: Mapping[str, str],
    catalog: ClaimCatalog,
    model_text: str | None = None,
) -> Policy:
    """Assemble a policy from stored rules, the catalog-derived rules and the model text."""
    return Policy(
        default_model_text() if model_text is None else model_text,
        frozenset(stored),
        derived_rules(catalog),
        legal_bases,
    )


def _departments(catalog: ClaimCatalog) -> set[str]:
    claims = {d for claim in catalog.claims.values() for d in claim.departments}
    return claims | {d for job in catalog.jobs.values() for d in job.departments}


def _check_p(rule: Rule, catalog: ClaimCatalog, groups: Set[str]) -> None:
    sub, dom, obj, act, eft = rule.values
    if sub == ALL_DOMAINS:
        raise InvalidPolicy("rule p: the subject must be a role or requester, not '*'")
    if dom not in _departments(catalog) | {ALL_DOMAINS}:
        raise InvalidPolicy("rule p: the domain must be '*' or a catalog department")
    job = catalog.jobs.get(obj)
    if job is not None:
        if act not in job.purposes:
            raise InvalidPolicy(f"rule p: the action must be one of {sorted(job.purposes)}")
        if dom not in (*job.departments, ALL_DOMAINS):
            raise InvalidPolicy("rule p: the domain must be '*' or a department of the job")
    elif obj not in catalog.claims and obj not in groups | {FERTILITY_GROUP}:
        raise InvalidPolicy(
            "rule p: the object must be a catalog claim, a claim group or a job object"
        )
    elif act not in catalog.purposes:
        raise InvalidPolicy("rule p: the action must be a catalog purpose")
    if eft not in (ALLOW, DENY):
        raise InvalidPolicy(f"rule p: the effect must be '{ALLOW}' or '{DENY}'")


def _check_g(rule: Rule, catalog: ClaimCatalog, groups: Set[str]) -> None:
    user, role, dom = rule.values
    if ALL_DOMAINS in (user, role):
        raise InvalidPolicy("rule g: requester and role must not be '*'")
    if dom not in _departments(catalog) | {ALL_DOMAINS}:
        raise InvalidPolicy("rule g: the domain must be '*' or a catalog department")


def _check_g2(rule: Rule, catalog: ClaimCatalog, groups: Set[str]) -> None:
    claim, group = rule.values
    if claim not in catalog.claims:
        raise InvalidPolicy("rule g2: the member must be a catalog claim")
    if group == FERTILITY_GROUP:
        raise InvalidPolicy(f"rule g2: {FERTILITY_GROUP} is derived from the catalog")
    if group in catalog.claims or group == ALL_DOMAINS:
        raise InvalidPolicy("rule g2: the group name must not be a claim name or '*'")


_CHECKS: Mapping[str, Callable[[Rule, ClaimCatalog, Set[str]], None]] = MappingProxyType(
    {"p": _check_p, "g": _check_g, "g2": _check_g2}
)


def check_rule(rule: Rule, catalog: ClaimCatalog, groups: Set[str]) -> None:
    """Refuse a rule an administrator may not store: unknown type, wrong arity, malformed
    value, or a claim, purpose, department or group the catalog does not know. ``groups``
    are the claim groups the resulting policy defines (g2 targets)."""
    arity = RULE_ARITY.get(rule.ptype)
    if arity is None:
        raise InvalidPolicy(f"rule.ptype: expected one of {sorted(RULE_ARITY)}")
    if len(rule.values) != arity:
        raise InvalidPolicy(f"rule {rule.ptype}: expected {arity} values")
    for i, value in enumerate(rule.values):
        if value != ALL_DOMAINS and not _TOKEN.fullmatch(value):
            raise InvalidPolicy(f"rule {rule.ptype}: value {i} must be 1-128 of [A-Za-z0-9_.:@-]")
    _CHECKS[rule.ptype](rule, catalog, groups)


def check_legal_basis(purpose: str, basis: str, catalog: ClaimCatalog) -> None:
    """A legal basis names a catalog purpose and cites a statutory PIPL art. 13(1) ground
    ((2)-(7)); purposes relying on consent, (1), are simply not declared."""
    if purpose not in catalog.purposes:
        raise InvalidPolicy("legal_basis.purpose: expected a catalog purpose")
    if not _STATUTORY.fullmatch(basis):
        raise InvalidPolicy(
            "legal_basis.basis: expected 'PIPL art. 13(1)(n)' with n in 2-7, then up to four "
            "'; '-separated citations"
        )


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text("utf-8")


def default_model_text() -> str:
    """The shipped Casbin model (``policies/model.conf``)."""
    return _read("model.conf")


def default_rules() -> frozenset[Rule]:
    """The demo policy (``policies/default.csv``), used to seed an empty store."""
    lines = (line.strip() for line in _read("default.csv").splitlines())
    return frozenset(Rule.parse(line) for line in lines if line and not line.startswith("#"))


def default_legal_bases() -> dict[str, str]:
    """The demo legal bases (``policies/legal_bases.json``: purpose -> citation)."""
    doc = json.loads(_read("legal_bases.json"))
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise InvalidPolicy("legal_bases.json: expected an object of purpose -> citation")
    return dict(doc)
