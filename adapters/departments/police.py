"""公安 Public security: household registration (户籍)."""

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
    select,
)

from tongban.primitives.regions import DISTRICTS, PROVINCES

from ..at_rest import SEALED
from ..columns import in_future
from ..department import Columns, Department, Param, Predicate, RecordCheck, common_tables
from ._sql import exists

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


_c = registrations.c
_registered = (
    select(_c.id).where(_c.person_id == bindparam("s"), _c.since <= bindparam("as_of")).limit(1)
)
_in_district = (
    select(_c.id)
    .where(
        _c.person_id == bindparam("s"),
        _c.since <= bindparam("as_of"),
        _c.district == bindparam("district"),
    )
    .limit(1)
)
_in_province = (
    select(_c.id)
    .where(
        _c.person_id == bindparam("s"),
        _c.since <= bindparam("as_of"),
        func.substr(_c.district, 1, 2) == bindparam("province"),
    )
    .limit(1)
)


def registered_in_household(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(conn, _registered, {"s": subject, "as_of": as_of})


def household_in_district(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(
        conn, _in_district, {"s": subject, "as_of": as_of, "district": params["district"]}
    )


def household_in_province(
    conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date
) -> bool:
    return exists(
        conn, _in_province, {"s": subject, "as_of": as_of, "province": params["province"]}
    )


_r2 = registrations.alias("guardian")
_guardian = (
    select(_c.id)
    .join(_r2, _r2.c.household_no == _c.household_no)
    .where(
        _c.person_id == bindparam("child"),
        _c.relation == "child",
        _c.since <= bindparam("as_of"),
        _r2.c.person_id == bindparam("s"),
        _r2.c.relation.in_(("head", "spouse")),
        _r2.c.since <= bindparam("as_of"),
    )
    .limit(1)
)


def guardian_of(conn: Connection, subject: str, related: str, as_of: dt.date) -> bool:
    """The subject heads (or is the head's spouse in) the household where ``related`` is
    registered as a child: the guardian on record who may consent for a minor."""
    return exists(conn, _guardian, {"s": subject, "child": related, "as_of": as_of})


def _no_params(conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date) -> bool:
    raise AssertionError("guardian_of is evaluated with its related person")


# Sensitive columns (encryption at rest): each holds a blind index, the values go into
# the row's sealed column. Column → token domain.
AT_REST: dict[str, dict[str, str]] = {
    "registrations": {"person_id": "id", "household_no": "household"},
}

DEPARTMENT = Department(
    name="police",
    title="公安 Public security",
    metadata=metadata,
    id_columns={"registrations": ("person_id",)},
    checks=(
        RecordCheck("registrations", "future_date", in_future("since")),
        RecordCheck("registrations", "unknown_relation", _unknown_relation),
    ),
    predicates={
        p.name: p
        for p in (
            Predicate(
                "registered_in_household",
                "The subject is registered in a household (户口).",
                registered_in_household,
                tables=("registrations",),
            ),
            Predicate(
                "household_in_district",
                "The subject's household registration is in the given district.",
                household_in_district,
                tables=("registrations",),
                params=(Param("district", tuple(DISTRICTS)),),
            ),
            Predicate(
                "guardian_of",
                "The subject is a guardian on record of the related child (same household).",
                _no_params,
                tables=("registrations",),
                related_query=guardian_of,
            ),
            Predicate(
                "household_in_province",
                "The subject's household registration is in the given province.",
                household_in_province,
                tables=("registrations",),
                params=(Param("province", tuple(PROVINCES)),),
            ),
        )
    },
)

__all__ = ["AT_REST", "DEPARTMENT", "RELATIONS", "registrations"]
