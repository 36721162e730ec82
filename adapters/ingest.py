"""Ingest: validate a batch of records, load the good ones, quarantine the rest.

Validation is vectorised over the batch. A record failing any rule is not loaded: it goes to
the quarantine with the first rule it broke, and every ID number in it is indexed so that a
predicate about that person answers UNKNOWN instead of a confident but wrong "no".
The report counts errors by kind and shows only masked ID numbers.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select

from tongban.primitives.idnumber import Reason, mask, validate_many

from .at_rest import SEALED, AtRest
from .department import Columns
from .store import DepartmentStore

__all__ = ["TableReport", "ValidationReport", "ingest", "to_pylist"]

_EXAMPLES_PER_KIND = 3


@dataclass
class TableReport:
    table: str
    received: int = 0
    loaded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "received": self.received,
            "loaded": self.loaded,
            "quarantined": sum(self.errors.values()),
            "errors": dict(sorted(self.errors.items())),
            "examples": self.examples,
        }


@dataclass
class ValidationReport:
    department: str
    tables: list[TableReport] = field(default_factory=list)

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for t in self.tables:
            total.update(t.errors)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "department": self.department,
            "errors": dict(sorted(self.errors().items())),
            "tables": [t.to_json() for t in self.tables],
        }


def to_pylist(values: npt.NDArray[Any], nullable: bool) -> list[Any]:
    """Column → DBAPI values: dates as ISO strings, NaT and empty strings as NULL."""
    if np.issubdtype(values.dtype, np.datetime64):
        iso = np.datetime_as_string(values, unit="D").astype(object)
        iso[np.isnat(values)] = None
        return iso.tolist()  # type: ignore[no-any-return]
    if values.dtype.kind == "U" and nullable:
        obj = values.astype(object)
        obj[values == ""] = None
        return obj.tolist()  # type: ignore[no-any-return]
    return values.tolist()  # type: ignore[no-any-return]


def _normalise_ids(store: DepartmentStore, table: str, cols: Columns) -> dict[str, Any]:
    """Upper-case the check character (``x`` → ``X``) so that lookups, which parse the
    subject the same way, find the record and its quarantine entries."""
    out: dict[str, Any] = dict(cols)
    for column in store.department.id_columns.get(table, ()):
        out[column] = np.char.upper(np.asarray(cols[column], dtype="U"))
    return out


def _classify(store: DepartmentStore, table: str, cols: Columns, as_of: dt.date) -> list[str]:
    """The first broken rule per record ('' where none): ID numbers first, then the
    department's own checks in declaration order."""
    n = len(next(iter(cols.values())))
    kinds = np.full(n, "", dtype=object)
    dept = store.department
    t = dept.table(table)
    for column in dept.id_columns.get(table, ()):
        values = np.asarray(cols[column], dtype="U")
        present = values != ""
        if not t.c[column].nullable:
            kinds[~present & (kinds == "")] = "missing_id"
        reasons = validate_many(values, today=as_of)
        for reason in Reason:
            if reason is Reason.OK:
                continue
            hit = present & (reasons == reason) & (kinds == "")
            kinds[hit] = reason.name.lower()
    for check in dept.checks:
        if check.table != table:
            continue
        hit = check.fn(cols, as_of) & (kinds == "")
        kinds[hit] = check.kind
    return list(kinds.tolist())


def ingest(store: DepartmentStore, table: str, cols: Columns, as_of: dt.date) -> TableReport:
    dept = store.department
    t = dept.table(table)
    names = [c.name for c in t.columns if c.name in cols]
    missing = [
        c.name for c in t.columns if not c.nullable and not c.primary_key and c.name not in cols
    ]
    if missing:
        raise ValueError(f"{dept.name}.{table}: batch lacks required columns {missing}")
    report = TableReport(table)
    n = len(cols[names[0]])
    report.received = n
    cols = _normalise_ids(store, table, cols)
    kinds = _classify(store, table, cols, as_of)
    bad = np.array([k != "" for k in kinds], dtype=bool)
    good = ~bad
    lists = {
        name: to_pylist(np.asarray(cols[name])[good], bool(t.c[name].nullable)) for name in names
    }
    keys = store.at_rest()
    report.loaded = int(good.sum())
    columns = names
    if keys is not None and table in store.sealed_tables:
        columns = _seal(store, keys, table, names, lists, report.loaded)
    store.bulk_insert(table, columns, zip(*(lists[name] for name in columns), strict=True))
    if bad.any():
        _quarantine(store, table, cols, names, np.flatnonzero(bad), kinds, report, keys)
    return report


def _seal(
    store: DepartmentStore,
    keys: AtRest,
    table: str,
    names: list[str],
    lists: dict[str, list[Any]],
    n: int,
) -> list[str]:
    """Encryption at rest: sensitive values into the row's sealed column, blind indexes in
    their place. The row's key is bound into its ciphertext, so it must be known now: an
    autoincrement id the batch lacks is assigned here."""
    sealed = store.sealed_tables[table]
    columns = list(names)
    if sealed.key not in lists:
        t = store.department.table(table)
        with store.engine.connect() as conn:
            top = select(func.coalesce(func.max(t.c[sealed.key]), 0))
            start = int(conn.execute(top).scalar_one())
        lists[sealed.key] = list(range(start + 1, start + 1 + n))
        columns.append(sealed.key)
    lists[SEALED] = keys.seal_rows(sealed, lists[sealed.key], [lists[c] for c in sealed.columns])
    for column, domain in zip(sealed.columns, sealed.domains, strict=True):
        lists[column] = keys.index.tokens(lists[column], domain)
    columns.append(SEALED)
    return columns


def _quarantine(
    store: DepartmentStore,
    table: str,
    cols: Columns,
    names: list[str],
    rows: npt.NDArray[np.intp],
    kinds: list[str],
    report: TableReport,
    keys: AtRest | None = None,
) -> None:
    dept = store.department
    t = dept.table(table)
    id_cols = dept.id_columns.get(table, ())
    q = dept.table("quarantine")
    with store.engine.connect() as conn:
        start = int(conn.execute(select(func.coalesce(func.max(q.c.id), 0))).scalar_one()) + 1
    picked = {
        name: to_pylist(np.asarray(cols[name])[rows], bool(t.c[name].nullable)) for name in names
    }
    records, subjects = [], []
    for offset, row in enumerate(rows.tolist()):
        qid = start + offset
        record = {name: picked[name][offset] for name in names}
        kind = kinds[row]
        text = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if keys is not None:
            text = keys.seal_text("quarantine", qid, text)
        records.append((qid, table, kind, text))
        report.errors[kind] += 1
        shown = report.examples.setdefault(kind, [])
        for column in id_cols:
            value = record.get(column)
            if value:
                subjects.append((qid, table, value if keys is None else keys.index.token(value)))
                if len(shown) < _EXAMPLES_PER_KIND and column == id_cols[0]:
                    shown.append(mask(str(value)))
    store.bulk_insert("quarantine", ["id", "table_name", "kind", "record"], records)
    store.bulk_insert("quarantine_subjects", ["quarantine_id", "table_name", "id_number"], subjects)
