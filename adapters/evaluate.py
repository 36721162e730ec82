"""Predicate evaluation: the only question an adapter answers about a person."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Select, bindparam, literal, or_, select

from primitives.idnumber import parse
from primitives.wire import PredicateCall, Tri

from .department import Predicate
from .store import DepartmentStore

__all__ = ["Evaluator"]


class Evaluator:
    """Validates a call against the department's declarations and evaluates it.

    The order matters: the predicate and parameters are checked before the subject is
    looked at, so a malformed request reveals nothing about anyone.
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

    def check(self, call: PredicateCall) -> tuple[Predicate, dict[str, str], str]:
        predicate = self.department.predicate(call.predicate)
        params = predicate.check_params(call.params)
        subject = parse(call.subject).number
        return predicate, params, subject

    def evaluate(self, call: PredicateCall) -> Tri:
        predicate, params, subject = self.check(call)
        as_of = self.as_of()
        with self.store.reading() as conn:
            if conn.execute(self._quarantined[predicate.name], {"s": subject}).first():
                return Tri.UNKNOWN
            return Tri.of(predicate.query(conn, subject, params, as_of))
