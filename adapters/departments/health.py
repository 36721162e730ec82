"""卫健 Health commission: births, birth certificates, the family-planning archive."""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Column,
    Date,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from tongban.primitives.idnumber import birth_yyyymmdd_many

from ..at_rest import SEALED
from ..columns import dates, in_future, precedes, yyyymmdd
from ..department import Columns, RecordCheck, StoreSchema, common_tables

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

SCHEMA = StoreSchema(
    metadata=metadata,
    id_columns={"births": ("child_id", "mother_id", "father_id")},
    checks=(
        RecordCheck("births", "mother_under_14", _mother_under_14),
        RecordCheck(
            "births", "certificate_before_birth", precedes("certificate_issued", "birth_date")
        ),
        RecordCheck("births", "future_date", in_future("birth_date")),
    ),
    derive=(
        "INSERT INTO fp_archive (mother_id, children_count, last_birth_date, district) "
        "SELECT mother_id, count(*), max(birth_date), max(district) FROM births GROUP BY mother_id",
    ),
    sealed=AT_REST,
)

__all__ = ["AT_REST", "SCHEMA", "births", "fp_archive"]
