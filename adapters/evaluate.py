"""Predicate evaluation: the only question an adapter answers about a person."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Protocol, TypedDict, TypeVar

from sqlalchemy import Connection, Select, bindparam, literal, or_, select, text

from tongban.primitives.errors import StoreUnavailable, UnknownParameter
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .at_rest import BlindIndex
from .department import Predicate
from .store import DepartmentStore

__all__ = ["MANAGED", "Evaluator", "PredicateSource", "SourceHealth"]

T = TypeVar("T")

MANAGED = "managed"
"""The source kind of a store that `tongban generate` fills (every other kind is the
SQLAlchemy dialect of a department's own database: "sqlite", "postgresql", "mysql", ...)."""


class SourceHealth(TypedDict):
    """Where a department's answers come from and whether it can be read right now."""

    kind: str
    reachable: bool
    detail: str


class PredicateSource(Protocol):
    """What the adapter (:class:`~tongban.adapters.protocol.AdapterCore` and its HTTP
    service) needs of a department's answers: a managed store's :class:`Evaluator` and a
    department file's :class:`~tongban.adapters.file_source.FileSource` both are one.

    ``evaluate`` and ``evaluate_many`` validate the call (predicate known, parameters
    enumerated, ``related`` present iff declared, ID numbers valid) before reading
    anything, raising :class:`~tongban.primitives.errors.TongbanError` subclasses.
    """

    @property
    def name(self) -> str:
        """The department's name in claims, policy and certificates."""
        ...

    @property
    def title(self) -> str: ...

    @property
    def kind(self) -> str:
        """``managed``, or the dialect of the department's own database."""
        ...

    def describe(self) -> list[dict[str, object]]:
        """The predicates, as ``GET /v1/predicates`` lists them."""
        ...

    def evaluate(self, call: PredicateCall) -> Tri: ...

    def evaluate_many(
        self, predicate_name: str, params: Mapping[str, str], subjects: list[str]
    ) -> list[Tri]: ...

    def answer_as_of(self) -> str:
        """What the next answer reflects, as ISO 8601: a managed store's reference date;
        for a live source the time of reading (taken before the read, so every change
        committed by then is in the answer)."""
        ...

    def health(self) -> SourceHealth: ...

    def dispose(self) -> None:
        """Close the connections to the source."""
        ...


class Evaluator:
    """Validates a call against the department's declarations and evaluates it.

    The order matters: the predicate and parameters are checked before the subject is
    looked at, so a malformed request reveals nothing about anyone.

    On a store encrypted at rest, subjects are looked up by their blind index. Predicates
    are positive (TRUE needs a matching row), so a TRUE found with an index key is right;
    anything else is confirmed against the store's current index key first (one small
    read), so a reader holding a key rotated away under it re-keys and asks again instead
    of answering FALSE from finding nothing.
    """

    def __init__(self, store: DepartmentStore) -> None:
        self.store = store
        self.department = store.department
        qs = self.department.table("quarantine_subjects")
        self._quarantined: dict[str, Select[tuple[int]]] = {
            # OR of constants rather than IN: an expanding IN is re-rendered on every call.
            name: select(qs.c.quarantine_id)
            .where(
                qs.c.id_number == bindparam("s"),
                or_(*(qs.c.table_name == literal(t) for t in p.tables)),
            )
            .limit(1)
            for name, p in self.department.predicates.items()
        }

    @property
    def name(self) -> str:
        return self.department.name

    @property
    def title(self) -> str:
        return self.department.title

    @property
    def kind(self) -> str:
        return MANAGED

    def describe(self) -> list[dict[str, object]]:
        return [p.describe() for p in self.department.predicates.values()]

    def as_of(self) -> dt.date:
        return self.store.as_of()

    def answer_as_of(self) -> str:
        return self.as_of().isoformat()

    def health(self) -> SourceHealth:
        """Reachable when the store answers a trivial query and its reference date."""
        try:
            with self.store.reading() as conn:
                conn.execute(text("SELECT 1"))
            as_of = self.as_of()
        except Exception:  # StoreUnavailable, or a meta table that cannot be read
            return SourceHealth(kind=MANAGED, reachable=False, detail="store is unavailable")
        return SourceHealth(kind=MANAGED, reachable=True, detail=f"as of {as_of.isoformat()}")

    def dispose(self) -> None:
        self.store.dispose()

    def check(self, call: PredicateCall) -> tuple[Predicate, dict[str, str], str, str | None]:
        predicate = self.department.predicate(call.predicate)
        params = predicate.check_params(call.params)
        if (call.related is None) != (predicate.related_query is None):
            raise UnknownParameter(
                f"related: {predicate.name} "
                + ("needs" if predicate.related_query else "takes no")
                + " related person"
            )
        subject = parse(call.subject).number
        related = parse(call.related).number if call.related is not None else None
        return predicate, params, subject, related

    def evaluate_many(
        self, predicate_name: str, params: Mapping[str, str], subjects: list[str]
    ) -> list[Tri]:
        """One predicate over many subjects (a batch check), on one connection."""
        predicate = self.department.predicate(predicate_name)
        if predicate.related_query is not None:
            raise UnknownParameter(f"related: {predicate.name} cannot be batched")
        clean = predicate.check_params(params)
        numbers = [parse(s).number for s in subjects]
        as_of = self.as_of()
        quarantined = self._quarantined[predicate.name]

        def many(conn: Connection, index: BlindIndex) -> list[Tri]:
            out: list[Tri] = []
            for number in numbers:
                subject = index.token(number)
                if conn.execute(quarantined, {"s": subject}).first():
                    out.append(Tri.UNKNOWN)
                else:
                    out.append(Tri.of(predicate.query(conn, subject, clean, as_of)))
            return out

        return self._confirmed(many, lambda results: all(r is Tri.TRUE for r in results))

    def evaluate(self, call: PredicateCall) -> Tri:
        predicate, params, subject, related = self.check(call)
        as_of = self.as_of()
        quarantined = self._quarantined[predicate.name]

        def one(conn: Connection, index: BlindIndex) -> Tri:
            s = index.token(subject)
            r = None if related is None else index.token(related)
            for person in (s, r):
                if person is not None and conn.execute(quarantined, {"s": person}).first():
                    return Tri.UNKNOWN
            if r is not None and predicate.related_query is not None:
                return Tri.of(predicate.related_query(conn, s, r, as_of))
            return Tri.of(predicate.query(conn, s, params, as_of))

        return self._confirmed(one, lambda result: result is Tri.TRUE)

    def _confirmed(
        self, run: Callable[[Connection, BlindIndex], T], certain: Callable[[T], bool]
    ) -> T:
        index = self.store.blind_index()
        with self.store.reading() as conn:
            for _ in range(3):
                result = run(conn, index)
                if certain(result) or self.store.index_is_current(conn, index):
                    return result
                index = self.store.blind_index(reload=True)
        raise StoreUnavailable(f"{self.department.name} store is being re-keyed")
