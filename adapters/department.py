"""A built-in department: its department file over the managed store's tables.

What a department answers (predicates, quality checks, statistics, feature sets) is its
department file, ``adapters/departments/NAME.toml``, as for any department. The managed
store that ``tongban generate`` fills has tables, ingest checks and derived tables of its
own: those are declared beside the file in ``adapters/departments/NAME.py`` as a
:class:`StoreSchema`, and the two together are a :class:`Department`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text

from .deptfile import DepartmentFile, FilePredicate, FileStatistic

__all__ = [
    "Columns",
    "Department",
    "RecordCheck",
    "StoreSchema",
    "common_tables",
]

Columns = Mapping[str, npt.NDArray[np.generic]]
"""A batch of records, column-wise: the generator and ingest never build per-row objects."""

CheckFn = Callable[[Columns, dt.date], npt.NDArray[np.bool_]]


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """An ingest rule: ``fn`` returns True for each record that violates it."""

    table: str
    kind: str
    fn: CheckFn


@dataclass(frozen=True)
class StoreSchema:
    """The managed store of one department: what ``tongban generate`` and ingest need."""

    metadata: MetaData
    # Columns holding ID numbers, per table: validated on ingest and indexed for lookup.
    id_columns: Mapping[str, tuple[str, ...]]
    checks: tuple[RecordCheck, ...]
    # Statements run after a bulk load to build derived tables (e.g. archives).
    derive: tuple[str, ...] = ()
    # Sensitive columns (encryption at rest), per table: column → blind-index domain.
    # Each holds a blind index once the store is sealed; the values go into the row's
    # sealed column.
    sealed: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in (*self.id_columns, *self.sealed):
            if table not in self.metadata.tables:
                raise ValueError(f"columns declared for unknown table {table}")


@dataclass(frozen=True)
class Department:
    """A department file (``source = "managed"``) and the store schema it reads."""

    file: DepartmentFile
    schema: StoreSchema

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def title(self) -> str:
        return self.file.title

    @property
    def metadata(self) -> MetaData:
        return self.schema.metadata

    @property
    def id_columns(self) -> Mapping[str, tuple[str, ...]]:
        return self.schema.id_columns

    @property
    def checks(self) -> tuple[RecordCheck, ...]:
        return self.schema.checks

    @property
    def derive(self) -> tuple[str, ...]:
        return self.schema.derive

    @property
    def predicates(self) -> Mapping[str, FilePredicate]:
        return self.file.predicates

    @property
    def statistics(self) -> Mapping[str, FileStatistic]:
        return self.file.statistics

    def table(self, name: str) -> Table:
        return self.metadata.tables[name]

    def predicate(self, name: str) -> FilePredicate:
        return self.file.predicate(name)


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
