"""人社 Human resources and social security: employment, social insurance, maternity
allowance (生育津贴) and childcare subsidy payments."""

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
from ..columns import end_not_after_start, precedes
from ..department import Columns, RecordCheck, StoreSchema, common_tables

metadata = MetaData()
common_tables(metadata)
employment = Table(
    "employment",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_id", String(24), nullable=False),
    Column("employer_code", String(18), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_employment_person", "person_id"),
)
insurance = Table(
    "social_insurance",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_id", String(24), nullable=False),
    Column("insurance_type", String(16), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column("district", String(6), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_insurance_person", "person_id", "insurance_type"),
)
maternity_payments = Table(
    "maternity_allowance_payments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_id", String(24), nullable=False),
    Column("child_birth_date", Date, nullable=False),
    Column("paid_date", Date, nullable=False),
    Column("amount", Integer, nullable=False),
    Column("district", String(6), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_maternity_person", "person_id"),
    Index("ix_maternity_district_paid", "district", "paid_date"),
)
childcare_payments = Table(
    "childcare_subsidy_payments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("applicant_id", String(24), nullable=False),
    Column("child_id", String(24), nullable=False),
    Column("paid_date", Date, nullable=False),
    Column("amount", Integer, nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_childcare_applicant", "applicant_id", "paid_date"),
)

INSURANCE_TYPES = ("pension", "maternity", "unemployment")


def _unknown_type(cols: Columns, as_of: dt.date) -> npt.NDArray[np.bool_]:
    return ~np.isin(cols["insurance_type"], INSURANCE_TYPES)


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "employment": {"person_id": "id"},
    "social_insurance": {"person_id": "id"},
    "maternity_allowance_payments": {"person_id": "id"},
    "childcare_subsidy_payments": {"applicant_id": "id", "child_id": "id"},
}

SCHEMA = StoreSchema(
    metadata=metadata,
    id_columns={
        "employment": ("person_id",),
        "social_insurance": ("person_id",),
        "maternity_allowance_payments": ("person_id",),
        "childcare_subsidy_payments": ("applicant_id", "child_id"),
    },
    checks=(
        RecordCheck(
            "employment", "ends_before_start", end_not_after_start("start_date", "end_date")
        ),
        RecordCheck(
            "social_insurance", "ends_before_start", end_not_after_start("start_date", "end_date")
        ),
        RecordCheck("social_insurance", "unknown_insurance_type", _unknown_type),
        RecordCheck(
            "maternity_allowance_payments",
            "paid_before_birth",
            precedes("paid_date", "child_birth_date"),
        ),
    ),
    sealed=AT_REST,
)

__all__ = [
    "AT_REST",
    "INSURANCE_TYPES",
    "SCHEMA",
    "childcare_payments",
    "employment",
    "insurance",
    "maternity_payments",
]
