"""医保 Medical insurance: insured periods."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

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
    or_,
    select,
)

from ..at_rest import SEALED
from ..columns import end_not_after_start
from ..department import Department, Predicate, RecordCheck, common_tables
from ._sql import exists

metadata = MetaData()
common_tables(metadata)
insured = Table(
    "insured_periods",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_id", String(24), nullable=False),
    Column("scheme", String(16), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column("district", String(6), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_insured_person", "person_id"),
)

SCHEMES = ("employee", "resident")


_active = (
    select(insured.c.id)
    .where(
        insured.c.person_id == bindparam("s"),
        insured.c.start_date <= bindparam("as_of"),
        or_(insured.c.end_date.is_(None), insured.c.end_date > bindparam("as_of")),
    )
    .limit(1)
)


def medical_insurance_active(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(conn, _active, {"s": subject, "as_of": as_of})


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "insured_periods": {"person_id": "id"},
}

DEPARTMENT = Department(
    name="medins",
    title="医保 Medical insurance",
    metadata=metadata,
    id_columns={"insured_periods": ("person_id",)},
    checks=(
        RecordCheck(
            "insured_periods", "ends_before_start", end_not_after_start("start_date", "end_date")
        ),
    ),
    predicates={
        "medical_insurance_active": Predicate(
            "medical_insurance_active",
            "The subject is covered by basic medical insurance now.",
            medical_insurance_active,
            tables=("insured_periods",),
        )
    },
)

__all__ = ["AT_REST", "DEPARTMENT", "SCHEMES", "insured"]
