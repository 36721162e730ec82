"""民政 Civil affairs: marriage registration and the low-income allowance (低保)."""

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
    or_,
    select,
)

from tongban.primitives.idnumber import birth_yyyymmdd_many

from ..at_rest import SEALED
from ..columns import dates, end_not_after_start, yyyymmdd
from ..department import Columns, Department, Predicate, RecordCheck, common_tables
from ._sql import exists

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


_married = (
    select(marriages.c.id)
    .where(
        or_(marriages.c.party_a == bindparam("s"), marriages.c.party_b == bindparam("s")),
        marriages.c.since <= bindparam("as_of"),
        or_(marriages.c.until.is_(None), marriages.c.until > bindparam("as_of")),
    )
    .limit(1)
)
_low_income = (
    select(members.c.id)
    .join(allowances, allowances.c.allowance_no == members.c.allowance_no)
    .where(
        members.c.member_id == bindparam("s"),
        allowances.c.start_date <= bindparam("as_of"),
        or_(allowances.c.end_date.is_(None), allowances.c.end_date > bindparam("as_of")),
    )
    .limit(1)
)


def currently_married(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(conn, _married, {"s": subject, "as_of": as_of})


def low_income_household_member(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(conn, _low_income, {"s": subject, "as_of": as_of})


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "marriages": {"party_a": "id", "party_b": "id"},
    "low_income_allowance": {"applicant_id": "id"},
    "low_income_members": {"member_id": "id"},
}

DEPARTMENT = Department(
    name="civil",
    title="民政 Civil affairs",
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
    predicates={
        p.name: p
        for p in (
            Predicate(
                "currently_married",
                "The subject is in a registered marriage that has not ended.",
                currently_married,
                tables=("marriages",),
            ),
            Predicate(
                "low_income_household_member",
                "The subject belongs to a household receiving the low-income allowance.",
                low_income_household_member,
                tables=("low_income_members", "low_income_allowance"),
            ),
        )
    },
)

__all__ = ["AT_REST", "DEPARTMENT", "allowances", "marriages", "members"]
