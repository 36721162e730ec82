"""What a department declares: its tables, ingest checks and the predicates it will evaluate.

A department module builds one :class:`Department` value and registers it. Everything the
adapter does — ingest, validation, evaluation, the HTTP service — reads from that value, so
adding a predicate is adding data, not a branch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, Text

from tongban.primitives.errors import UnknownPredicate
from tongban.primitives.params import check_enumerated

__all__ = [
    "Columns",
    "Department",
    "Param",
    "Predicate",
    "RecordCheck",
    "common_tables",
]

Columns = Mapping[str, npt.NDArray[np.generic]]
"""A batch of records, column-wise: the generator and ingest never build per-row objects."""

QueryFn = Callable[[Connection, str, Mapping[str, str], dt.date], bool]
RelatedQueryFn = Callable[[Connection, str, str, dt.date], bool]
CheckFn = Callable[[Columns, dt.date], npt.NDArray[np.bool_]]


@dataclass(frozen=True, slots=True)
class Param:
    """A predicate parameter. Values are enumerated: free-form thresholds would let repeated
    queries bisect a hidden value."""

    name: str
    values: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Predicate:
    name: str
    description: str
    query: QueryFn
    # Tables whose quarantined records about the subject make the answer UNKNOWN: the
    # department knows it holds a conflicting record and must not answer a confident "no".
    tables: tuple[str, ...]
    params: tuple[Param, ...] = ()
    # Set for predicates about two people: query(conn, subject, related, as_of).
    related_query: RelatedQueryFn | None = None

    def check_params(self, params: Mapping[str, str]) -> dict[str, str]:
        return check_enumerated(self.name, params, {p.name: p.values for p in self.params})

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "params": {p.name: list(p.values) for p in self.params},
            "related": self.related_query is not None,
        }


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """An ingest rule: ``fn`` returns True for each record that violates it."""

    table: str
    kind: str
    fn: CheckFn


@dataclass(frozen=True)
class Department:
    name: str
    title: str
    metadata: MetaData
    # Columns holding ID numbers, per table: validated on ingest and indexed for lookup.
    id_columns: Mapping[str, tuple[str, ...]]
    checks: tuple[RecordCheck, ...]
    predicates: Mapping[str, Predicate] = field(default_factory=dict)
    # Statements run after a bulk load to build derived tables (e.g. archives).
    derive: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for table in self.id_columns:
            if table not in self.metadata.tables:
                raise ValueError(f"{self.name}: id columns declared for unknown table {table}")

    def table(self, name: str) -> Table:
        return self.metadata.tables[name]

    def predicate(self, name: str) -> Predicate:
        try:
            return self.predicates[name]
        except KeyError:
            raise UnknownPredicate(
                f"predicate: not one {self.name} evaluates; GET /v1/predicates lists them"
            ) from None


def common_tables(metadata: MetaData) -> None:
    """Tables every department store has: metadata and the ingest quarantine."""
    Table(
        "meta",
        metadata,
        Column("key", String(64), primary_key=True),
        Column("value", Text, nullable=False),
    )
    Table(
        "quarantine",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("table_name", String(64), nullable=False),
        Column("kind", String(64), nullable=False),
        Column("record", Text, nullable=False),
    )
    Table(
        "quarantine_subjects",
        metadata,
        Column("quarantine_id", Integer, nullable=False),
        Column("table_name", String(64), nullable=False),
        Column("id_number", String(32), nullable=False),
        Index("ix_quarantine_subject", "id_number", "table_name"),
    )
