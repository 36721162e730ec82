"""医保 Medical insurance: insured periods."""

from __future__ import annotations

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
from ..columns import end_not_after_start
from ..department import RecordCheck, StoreSchema, common_tables

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


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "insured_periods": {"person_id": "id"},
}

SCHEMA = StoreSchema(
    metadata=metadata,
    id_columns={"insured_periods": ("person_id",)},
    checks=(
        RecordCheck(
            "insured_periods", "ends_before_start", end_not_after_start("start_date", "end_date")
        ),
    ),
    sealed=AT_REST,
)

__all__ = ["AT_REST", "SCHEMA", "SCHEMES", "insured"]
