"""民政 Civil affairs: marriage registration and the low-income allowance (低保)."""

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
from ..columns import dates, end_not_after_start, yyyymmdd
from ..department import Columns, RecordCheck, StoreSchema, common_tables

metadata = MetaData()
common_tables(metadata)
marriages = Table(
    "marriages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("party_a", String(24), nullable=False),
    Column("party_b", String(24), nullable=False),
    Column("since", Date, nullable=False),
    Column("until", Date),
    Column("district", String(6), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_marriages_a", "party_a"),
    Index("ix_marriages_b", "party_b"),
)
allowances = Table(
    "low_income_allowance",
    metadata,
    Column("allowance_no", String(20), primary_key=True),
    Column("applicant_id", String(24), nullable=False),
    Column("district", String(6), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column("monthly_amount", Integer, nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_allowance_applicant", "applicant_id"),
)
members = Table(
    "low_income_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("allowance_no", String(20), nullable=False),
    Column("member_id", String(24), nullable=False),
    Column(SEALED, LargeBinary),  # the row's sensitive values, SM4-GCM
    Index("ix_members_member", "member_id"),
)

# Legal minimum marriage ages (Civil Code art. 1047): men 22, women 20.
_MIN_AGE = {1: 22, 0: 20}


def _under_legal_age(cols: Columns, as_of: dt.date) -> npt.NDArray[np.bool_]:
    since = yyyymmdd(dates(cols["since"]))
    bad = np.zeros(len(since), dtype=bool)
    for column in ("party_a", "party_b"):
        ids = np.asarray(cols[column], dtype="U")
        born = birth_yyyymmdd_many(ids)
        seq_digit = np.array([s[16:17] or "0" for s in ids.tolist()], dtype="U1")
        male = np.isin(seq_digit, list("13579"))
        min_age = np.where(male, _MIN_AGE[1], _MIN_AGE[0]) * 10000
        bad |= (born > 0) & (since < born + min_age)
    return bad


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "marriages": {"party_a": "id", "party_b": "id"},
    "low_income_allowance": {"applicant_id": "id"},
    "low_income_members": {"member_id": "id"},
}

SCHEMA = StoreSchema(
    metadata=metadata,
    id_columns={
        "marriages": ("party_a", "party_b"),
        "low_income_allowance": ("applicant_id",),
        "low_income_members": ("member_id",),
    },
    checks=(
        RecordCheck("marriages", "under_legal_age", _under_legal_age),
        RecordCheck("marriages", "ends_before_start", end_not_after_start("since", "until")),
        RecordCheck(
            "low_income_allowance",
            "ends_before_start",
            end_not_after_start("start_date", "end_date"),
        ),
    ),
    sealed=AT_REST,
)

__all__ = ["AT_REST", "SCHEMA", "allowances", "marriages", "members"]
