"""卫健 Health commission: births, birth certificates, the family-planning archive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Column,
    Connection,
    Date,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    or_,
    select,
)

from tongban.primitives.idnumber import birth_yyyymmdd_many

from ..at_rest import SEALED
from ..columns import dates, in_future, precedes, years_before, yyyymmdd
from ..department import Columns, Department, Param, Predicate, RecordCheck, common_tables
from ._sql import exists

metadata = MetaData()
common_tables(metadata)
births = Table(
    "births",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("child_id", String(24), nullable=False),
    Column("mother_id", String(24), nullable=False),
    Column("father_id", String(24)),
    Column("birth_date", Date, nullable=False),
    Column("birth_order", Integer, nullable=False),
    Column("certificate_no", String(24), nullable=False),
    Column("certificate_issued", Date),
    Column("district", String(6), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_births_child", "child_id"),
    Index("ix_births_mother", "mother_id", "birth_date"),
    Index("ix_births_father", "father_id", "birth_date"),
)
fp_archive = Table(
    "fp_archive",
    metadata,
    Column("mother_id", String(24), primary_key=True),
    Column("children_count", Integer, nullable=False),
    Column("last_birth_date", Date, nullable=False),
    Column("district", String(6), nullable=False),
)


def _mother_under_14(cols: Columns, as_of: dt.date) -> npt.NDArray[np.bool_]:
    mother_born = birth_yyyymmdd_many(cols["mother_id"])
    return (mother_born > 0) & (yyyymmdd(dates(cols["birth_date"])) < mother_born + 14_0000)


_certified = (
    select(births.c.id)
    .where(
        births.c.child_id == bindparam("s"),
        births.c.certificate_issued.is_not(None),
        births.c.certificate_issued <= bindparam("as_of"),
    )
    .limit(1)
)


def birth_certificate_issued(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(conn, _certified, {"s": subject, "as_of": as_of})


_parent_births = select(func.count(), func.max(births.c.birth_date)).where(
    or_(births.c.mother_id == bindparam("s"), births.c.father_id == bindparam("s")),
    births.c.birth_date <= bindparam("as_of"),
)


def children_at_least_youngest_under(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    count, youngest = conn.execute(_parent_births, {"s": subject, "as_of": as_of}).one()
    if count < int(params["min_children"]):
        return False
    cutoff = years_before(as_of, int(params["youngest_under_years"]))
    if isinstance(youngest, str):  # SQLite aggregates lose the column type
        youngest = dt.date.fromisoformat(youngest)
    return bool(youngest > cutoff)


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "births": {
        "child_id": "id",
        "mother_id": "id",
        "father_id": "id",
        "certificate_no": "certificate",
    },
}

DEPARTMENT = Department(
    name="health",
    title="卫健 Health commission",
    metadata=metadata,
    id_columns={"births": ("child_id", "mother_id", "father_id")},
    checks=(
        RecordCheck("births", "mother_under_14", _mother_under_14),
        RecordCheck(
            "births", "certificate_before_birth", precedes("certificate_issued", "birth_date")
        ),
        RecordCheck("births", "future_date", in_future("birth_date")),
    ),
    predicates={
        p.name: p
        for p in (
            Predicate(
                "birth_certificate_issued",
                "The subject, as a child, has a birth record with a medical birth certificate.",
                birth_certificate_issued,
                tables=("births",),
            ),
            Predicate(
                "children_at_least_youngest_under",
                "The subject is a parent of at least N children, the youngest under Y years.",
                children_at_least_youngest_under,
                tables=("births",),
                params=(
                    Param("min_children", ("2", "3")),
                    Param("youngest_under_years", ("3", "6")),
                ),
            ),
        )
    },
    derive=(
        "INSERT INTO fp_archive (mother_id, children_count, last_birth_date, district) "
        "SELECT mother_id, count(*), max(birth_date), max(district) FROM births GROUP BY mother_id",
    ),
)

__all__ = ["AT_REST", "DEPARTMENT", "births", "fp_archive"]
