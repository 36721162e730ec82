"""Predicate evaluation: the only question an adapter answers about a person."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Protocol, TypedDict, TypeVar

from sqlalchemy import Connection, TextClause, text

from tongban.primitives.errors import StoreUnavailable, UnknownParameter
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .at_rest import BlindIndex
from .deptfile import FilePredicate
from .live import LiveSource, checks_statement, interpret, person_binds
from .store import DepartmentStore

__all__ = ["MANAGED", "Evaluator", "PredicateSource", "SourceHealth"]

T = TypeVar("T")

log = logging.getLogger("tongban.adapters.evaluate")

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
    """Validates a call against the department's file and evaluates it on the managed store.

    The order matters: the predicate and parameters are checked before the subject is
    looked at, so a malformed request reveals nothing about anyone. Each answer runs the
    file's statements as a department's own database would: the quality checks that cover
    the predicate (a subject they name answers ``unknown``), then the predicate's query.

    On a store encrypted at rest, subjects are looked up by their blind index: the file's
    ``:subject`` is bound to the token (the managed store holds no 15-digit numbers, so
    ``:subject15`` is NULL). Predicates are positive (TRUE needs a matching row), so a
    TRUE found with an index key is right; anything else is confirmed against the store's
    current index key first (one small read), so a reader holding a key rotated away
    under it re-keys and asks again instead of answering FALSE from finding nothing.
    """

    def __init__(self, store: DepartmentStore) -> None:
        self.store = store
        self.department = store.department
        self.file = self.department.file
        self.defects = 0
        self._statements = {n: text(p.sql) for n, p in self.file.predicates.items()}
        self._checks: dict[str, TextClause | None] = {
            n: checks_statement(self.file.checks_for(n), related=p.related)
            for n, p in self.file.predicates.items()
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

    def check(self, call: PredicateCall) -> tuple[FilePredicate, dict[str, str], str, str | None]:
        predicate = self.department.predicate(call.predicate)
        params = predicate.check_params(call.params)
        if (call.related is not None) != predicate.related:
            raise UnknownParameter(
                f"related: {predicate.name} "
                + ("needs" if predicate.related else "takes no")
                + " related person"
            )
        subject = parse(call.subject).number
        related = parse(call.related).number if call.related is not None else None
        return predicate, params, subject, related

    def _values(
        self, predicate: FilePredicate, params: dict[str, str], as_of: dt.date
    ) -> dict[str, object]:
        # LiveSource's binds exactly: :today, :today_yyyymmdd, the declared dates, params.
        return LiveSource.binds(as_of, predicate.dates, params) | params

    def _answer(
        self,
        conn: Connection,
        predicate: FilePredicate,
        values: dict[str, object],
        persons: list[str],
    ) -> Tri:
        # Tokens (or numbers) as stored: no 15-digit form, no other spelling.
        binds = values | person_binds([(p, None) for p in persons], lower_x=False)
        checks = self._checks[predicate.name]
        if checks is not None and conn.execute(checks, binds).scalar():
            return Tri.UNKNOWN
        result = conn.execute(self._statements[predicate.name], binds)
        width = len(result.keys())
        rows = result.fetchmany(2)
        result.close()
        verdict, defect = interpret(width, rows)
        if defect is not None:
            self.defects += 1
            log.warning("%s store: predicate %s: defect: %s", self.name, predicate.name, defect)
        return verdict

    def evaluate_many(
        self, predicate_name: str, params: Mapping[str, str], subjects: list[str]
    ) -> list[Tri]:
        """One predicate over many subjects (a batch check), on one connection."""
        predicate = self.department.predicate(predicate_name)
        if predicate.related:
            raise UnknownParameter(f"related: {predicate.name} cannot be batched")
        clean = predicate.check_params(params)
        numbers = [parse(s).number for s in subjects]
        values = self._values(predicate, clean, self.as_of())

        def many(conn: Connection, index: BlindIndex) -> list[Tri]:
            return [self._answer(conn, predicate, values, [index.token(n)]) for n in numbers]

        return self._confirmed(many, lambda results: all(r is Tri.TRUE for r in results))

    def evaluate(self, call: PredicateCall) -> Tri:
        predicate, params, subject, related = self.check(call)
        values = self._values(predicate, params, self.as_of())

        def one(conn: Connection, index: BlindIndex) -> Tri:
            persons = [index.token(subject)]
            if related is not None:
                persons.append(index.token(related))
            return self._answer(conn, predicate, values, persons)

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
