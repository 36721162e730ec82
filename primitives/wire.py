"""Typed messages that cross process boundaries between the gateway and the adapters."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest

__all__ = ["PredicateCall", "Tri", "all_of"]


class Tri(enum.StrEnum):
    """Three-valued (Kleene) truth: a department may be unable to decide."""

    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"

    def __invert__(self) -> Tri:
        if self is Tri.UNKNOWN:
            return self
        return Tri.FALSE if self is Tri.TRUE else Tri.TRUE

    @classmethod
    def of(cls, value: bool | None) -> Tri:
        if value is None:
            return cls.UNKNOWN
        return cls.TRUE if value else cls.FALSE


def all_of(values: list[Tri]) -> Tri:
    """Kleene conjunction: any FALSE decides; otherwise any UNKNOWN leaves it open."""
    if Tri.FALSE in values:
        return Tri.FALSE
    if Tri.UNKNOWN in values:
        return Tri.UNKNOWN
    return Tri.TRUE


@dataclass(frozen=True, slots=True)
class PredicateCall:
    """What the gateway asks one department: a predicate about one subject, nothing else."""

    predicate: str
    subject: str
    params: Mapping[str, str] = field(default_factory=dict)
    # A second person the predicate relates the subject to (e.g. "is a guardian of"),
    # for the few predicates that declare one; an ID number, never an enumerated value.
    related: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.predicate, str) or not self.predicate:
            raise BadRequest("predicate: expected a non-empty string")
        if not isinstance(self.subject, str):
            raise BadRequest("subject: expected an ID number string")
        if not isinstance(self.params, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.params.items()
        ):
            raise BadRequest("params: expected an object of string values")
        if self.related is not None and not isinstance(self.related, str):
            raise BadRequest("related: expected an ID number string")

    @classmethod
    def from_json(cls, body: Any) -> PredicateCall:
        if not isinstance(body, Mapping):
            raise BadRequest("body: expected a JSON object")
        unknown = set(body) - {"predicate", "subject", "params", "related"}
        if unknown:
            raise BadRequest(f"body: unexpected fields {sorted(unknown)}")
        params = body.get("params")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise BadRequest("params: expected an object of string values")
        return cls(
            predicate=body.get("predicate"),  # type: ignore[arg-type]
            subject=body.get("subject"),  # type: ignore[arg-type]
            params=dict(params),
            related=body.get("related"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "predicate": self.predicate,
            "subject": self.subject,
            "params": dict(self.params),
        }
        if self.related is not None:
            out["related"] = self.related
        return out
