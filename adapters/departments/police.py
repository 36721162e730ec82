"""公安 Public security: household registration (户籍)."""

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

from ..at_rest import SEALED
from ..columns import in_future
from ..department import Columns, RecordCheck, StoreSchema, common_tables

metadata = MetaData()
common_tables(metadata)
registrations = Table(
    "registrations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_id", String(24), nullable=False),
    Column("household_no", String(24), nullable=False),
    Column("district", String(6), nullable=False),
    Column("relation", String(16), nullable=False),
    Column("since", Date, nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_registrations_person", "person_id", "since"),
    Index("ix_registrations_household", "household_no"),
)

RELATIONS = ("head", "spouse", "child", "other")


def _unknown_relation(cols: Columns, as_of: dt.date) -> npt.NDArray[np.bool_]:
    return ~np.isin(cols["relation"], RELATIONS)


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "registrations": {"person_id": "id", "household_no": "household"},
}

SCHEMA = StoreSchema(
    metadata=metadata,
    id_columns={"registrations": ("person_id",)},
    checks=(
        RecordCheck("registrations", "future_date", in_future("since")),
        RecordCheck("registrations", "unknown_relation", _unknown_relation),
    ),
    sealed=AT_REST,
)

__all__ = ["AT_REST", "RELATIONS", "SCHEMA", "registrations"]
