"""Predicate evaluation: the only question an adapter answers about a person."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Select, bindparam, literal, or_, select

from tongban.primitives.errors import StoreUnavailable, UnknownParameter
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .at_rest import BlindIndex
from .department import Predicate
from .store import DepartmentStore

__all__ = ["Evaluator"]

T = TypeVar("T")


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

    def as_of(self) -> dt.date:
        return self.store.as_of()

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
        self, predicate_name: str, params: dict[str, str], subjects: list[str]
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
