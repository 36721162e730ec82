"""The claim catalog: declared data composing department predicates into yes/no claims.

A claim is a conjunction of department predicates, each possibly negated, with parameters
either fixed or taken from the caller's enumerated parameters. The catalog is validated
against the departments' own declarations when it is loaded, so a typo fails at start-up,
not on a citizen's request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tongban.adapters.deptfile import Declarations
from tongban.primitives.errors import BadRequest
from tongban.primitives.params import check_enumerated
from tongban.primitives.wire import PredicateCall, Tri, all_of

from .enumeration import DEFAULT_LIMIT, ParamLimit
from .jobs import JobObject, declared_jobs

__all__ = ["CLAIMS_PATH", "Catalog", "Claim", "Purpose", "Term", "UnknownClaim", "UnknownPurpose"]

CLAIMS_PATH = "/v1/claims"
"""Where a requester finds the claims it may ask and the purposes (the unknown-claim and
unknown-purpose problems point there, in ``detail`` and as their ``claims`` member)."""


class UnknownClaim(BadRequest):
    slug = "unknown-claim"
    title = "Unknown claim"


class UnknownPurpose(BadRequest):
    slug = "unknown-purpose"
    title = "Unknown purpose"


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    title: str
    title_zh: str


@dataclass(frozen=True, slots=True)
class Term:
    department: str
    predicate: str
    params: Mapping[str, str]  # value, or "$name" for the claim parameter `name`
    expect: bool = True

    def call(self, subject: str, claim_params: Mapping[str, str]) -> PredicateCall:
        bound = {k: claim_params[v[1:]] if v.startswith("$") else v for k, v in self.params.items()}
        return PredicateCall(self.predicate, subject, bound)

    def interpret(self, result: Tri) -> Tri:
        return result if self.expect else ~result


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    title: str
    title_zh: str
    terms: tuple[Term, ...]
    purposes: frozenset[str]
    params: Mapping[str, tuple[str, ...]]
    fertility_derived: bool = False
    # How many values of each parameter one requester may ask about one subject, and in
    # what window (gateway/enumeration.py); every parameter has one.
    param_limits: Mapping[str, ParamLimit] = field(default_factory=dict)

    @property
    def departments(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.department for t in self.terms))

    def check_params(self, params: Any) -> dict[str, str]:
        return check_enumerated(self.name, params, self.params)

    def combine(self, results: Sequence[Tri]) -> Tri:
        return all_of([t.interpret(r) for t, r in zip(self.terms, results, strict=True)])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "title_zh": self.title_zh,
            "params": {k: list(v) for k, v in self.params.items()},
            "param_limits": {k: v.describe() for k, v in self.param_limits.items()},
            "purposes": sorted(self.purposes),
            "departments": list(self.departments),
        }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"catalog: {key!r} declared twice")
        out[key] = value
    return out


class Catalog:
    def __init__(
        self,
        claims: Mapping[str, Claim],
        purposes: Mapping[str, Purpose],
        jobs: Mapping[str, JobObject] | None = None,
    ) -> None:
        self.claims = dict(claims)
        self.purposes = dict(purposes)
        #: Policy objects beside the claims: statistics and training jobs (gateway.jobs).
        self.jobs = dict(declared_jobs() if jobs is None else jobs)

    @classmethod
    def load(cls, departments: Mapping[str, Declarations], path: Path | None = None) -> Catalog:
        if path is None:
            text = resources.files(__package__).joinpath("claims.json").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return cls.from_json(json.loads(text, object_pairs_hook=_no_duplicates), departments)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], departments: Mapping[str, Declarations]) -> Catalog:
        purposes = {
            name: Purpose(name, p["title"], p["title_zh"]) for name, p in doc["purposes"].items()
        }
        claims: dict[str, Claim] = {}
        for name, spec in doc["claims"].items():
            params = {k: tuple(v) for k, v in spec.get("params", {}).items()}
            limits = _param_limits(name, params, spec.get("param_limits", {}))
            terms = tuple(
                Term(t["department"], t["predicate"], t.get("params", {}), t.get("expect", True))
                for t in spec["all_of"]
            )
            claim = Claim(
                name,
                spec["title"],
                spec["title_zh"],
                terms,
                frozenset(spec["purposes"]),
                params,
                bool(spec.get("fertility_derived", False)),
                limits,
            )
            _validate(claim, purposes, departments)
            claims[name] = claim
        return cls(claims, purposes)

    def claim(self, name: Any) -> Claim:
        """The claim ``name``, or :class:`UnknownClaim`, which points to the list of claims
        and never repeats the name (a caller's mistake could be a personal datum)."""
        if not isinstance(name, str) or name not in self.claims:
            raise UnknownClaim(
                f"claim: not in the catalog; GET {CLAIMS_PATH} lists the claims",
                claims=CLAIMS_PATH,
            )
        return self.claims[name]

    def purpose(self, name: Any) -> Purpose:
        if not isinstance(name, str) or name not in self.purposes:
            allowed = sorted(self.purposes)
            raise UnknownPurpose(
                f"purpose: expected one of {', '.join(allowed)} (GET {CLAIMS_PATH} lists them)",
                allowed=allowed,
                claims=CLAIMS_PATH,
            )
        return self.purposes[name]


def _param_limits(
    claim: str, params: Mapping[str, tuple[str, ...]], doc: Any
) -> dict[str, ParamLimit]:
    """Each parameter's declared limit, :data:`DEFAULT_LIMIT` where none is declared."""
    where = f"catalog: claim {claim}: param_limits"
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = sorted(set(doc) - set(params))
    if unknown:
        raise ValueError(f"{where}: {unknown} are not parameters of the claim")
    return {
        name: ParamLimit.from_json(doc[name], f"{where}.{name}") if name in doc else DEFAULT_LIMIT
        for name in params
    }


def _validate(
    claim: Claim, purposes: Mapping[str, Purpose], departments: Mapping[str, Declarations]
) -> None:
    where = f"catalog: claim {claim.name}"
    unknown = sorted(claim.purposes - set(purposes))
    if unknown:
        raise ValueError(f"{where} names undeclared purposes {unknown}")
    if not claim.terms:
        raise ValueError(f"{where} has no terms")
    for term in claim.terms:
        dept = departments.get(term.department)
        if dept is None:
            raise ValueError(f"{where}: unknown department {term.department}")
        predicate = dept.predicates.get(term.predicate)
        if predicate is None:
            raise ValueError(f"{where}: {term.department} has no predicate {term.predicate}")
        declared = {name: set(values) for name, values in predicate.params.items()}
        if set(term.params) != set(declared):
            raise ValueError(f"{where}: {term.predicate} needs parameters {sorted(declared)}")
        for pname, value in term.params.items():
            values = set(claim.params.get(value[1:], ("\0",))) if value.startswith("$") else {value}
            if not values <= declared[pname]:
                raise ValueError(f"{where}: {term.predicate}.{pname} outside its enumeration")
