"""Typed messages that cross process boundaries between the gateway and the adapters.

A signed request to a department carries exactly one message, under its ``kind``:
``call`` (:class:`PredicateCall`: one predicate about one subject), ``batch``
(:class:`BatchCall`: one predicate about up to :data:`MAX_BATCH` subjects) or ``statistic``
(:class:`StatisticCall`: a department's encrypted vector of one statistic for one job).
:func:`parse_message` turns a request's payload into its message; the adapter dispatches on
the message's type (adapters/protocol.py), and the gateway signs what it constructs here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import Field

from .bodies import Body
from .errors import BadRequest

__all__ = [
    "MAX_BATCH",
    "MESSAGE_KINDS",
    "BatchCall",
    "CosignRequest",
    "Message",
    "PredicateCall",
    "StatisticCall",
    "Tri",
    "all_of",
    "parse_message",
]

MAX_BATCH = 500  # subjects per signed batch request; the gateway splits larger batches


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

    kind: ClassVar[str] = "call"
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


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f"{where}: expected an object of string values")
    return dict(value)


def _only(body: Any, where: str, fields: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest(f"{where}: expected an object")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequest(f"{where}: unexpected field {unknown[0]!r}")
    return body


@dataclass(frozen=True, slots=True)
class BatchCall:
    """One predicate about up to :data:`MAX_BATCH` subjects (answered in their order)."""

    kind: ClassVar[str] = "batch"
    predicate: str
    params: Mapping[str, str]
    subjects: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.predicate, str) or not self.predicate:
            raise BadRequest("batch.predicate: expected a non-empty string")
        if not 0 < len(self.subjects) <= MAX_BATCH:
            raise BadRequest(f"batch.subjects: expected 1..{MAX_BATCH} ID numbers")
        if not all(isinstance(s, str) for s in self.subjects):
            raise BadRequest("batch.subjects: expected ID number strings")

    @classmethod
    def from_json(cls, body: Any) -> BatchCall:
        body = _only(body, "batch", {"predicate", "params", "subjects"})
        subjects = body.get("subjects")
        if not isinstance(subjects, list):
            raise BadRequest(f"batch.subjects: expected 1..{MAX_BATCH} ID numbers")
        return cls(
            body.get("predicate"),  # checked in __post_init__
            _string_map(body.get("params"), "batch.params"),
            tuple(subjects),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "predicate": self.predicate,
            "params": dict(self.params),
            "subjects": list(self.subjects),
        }


@dataclass(frozen=True, slots=True)
class StatisticCall:
    """A department's contribution to one statistics job: the statistic's ``name`` and
    ``params``, the analyst's Paillier ``key`` (JWK), the number of ``parties`` and the
    ``release`` rules. Their meaning is checked by the department's statistics, which
    refuse what they do not know (``unknown-statistic`` and the like)."""

    kind: ClassVar[str] = "statistic"
    job: str
    name: object
    params: object
    key: object
    parties: object
    release: object = None

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not 1 <= len(self.job) <= 64:
            raise BadRequest("statistic.job: expected a job id")

    @classmethod
    def from_json(cls, body: Any) -> StatisticCall:
        body = _only(body, "statistic", {"job", "name", "params", "key", "parties", "release"})
        return cls(
            body.get("job"),  # checked in __post_init__
            body.get("name"),
            body.get("params", {}),
            body.get("key"),
            body.get("parties"),
            body.get("release"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job": self.job,
            "name": self.name,
            "params": self.params,
            "key": self.key,
            "parties": self.parties,
        }
        if self.release is not None:
            out["release"] = self.release
        return out


Message = PredicateCall | BatchCall | StatisticCall
#: Each message type by the key it travels under in a signed request.
MESSAGE_KINDS: dict[str, type[PredicateCall] | type[BatchCall] | type[StatisticCall]] = {
    m.kind: m for m in (PredicateCall, BatchCall, StatisticCall)
}


def parse_message(payload: Mapping[str, Any]) -> Message:
    """The one message a request's payload carries: exactly one of ``call``, ``batch``
    or ``statistic``."""
    kinds = [kind for kind in MESSAGE_KINDS if kind in payload]
    if len(kinds) != 1:
        raise BadRequest("request: expected exactly one of " + ", ".join(MESSAGE_KINDS))
    return MESSAGE_KINDS[kinds[0]].from_json(payload[kinds[0]])


class CosignRequest(Body):
    """``POST /v1/witness/cosign``: a signed checkpoint note for the witness to cosign,
    with the consistency proof from the size it last cosigned (``from_size``; 0 and an
    empty path for its first)."""

    note: Annotated[str, Field(max_length=16 * 1024)]
    from_size: Annotated[int, Field(ge=0)]
    consistency_path: Annotated[
        list[Annotated[str, Field(pattern="^[0-9a-f]{64}$")]], Field(max_length=128)
    ]

    def proof(self) -> list[bytes]:
        return [bytes.fromhex(h) for h in self.consistency_path]
