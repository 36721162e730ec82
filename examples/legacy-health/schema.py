"""A provincial health commission's birth-certificate system, as legacy systems keep it.

The table and column names are the department's own (pinyin initials), not tongban's:
nothing in tongban knows them. Only ``health.toml`` beside this file names them, in its SQL.
The schema is defined once, with SQLAlchemy Core, so the same tables are created on SQLite,
PostgreSQL and MariaDB/MySQL; ``schema_mariadb.sql`` is the same schema as a DBA writes it.

CSYXZM 出生医学证明 (medical birth certificates), one row per certificate:

======= ================================================================================
ZMBH    证明编号 certificate number (primary key)
XSESFZH 新生儿身份证号 the newborn's ID number; '' until the child is registered
XSEXM   新生儿姓名 the newborn's name
MQSFZH  母亲身份证号 the mother's ID number: 18 digits, or 15 for people born before 2000
FQSFZH  父亲身份证号 the father's ID number, likewise; '' when not recorded
CSRQ    出生日期 birth date, CHAR(8) YYYYMMDD
TC      胎次 birth order
QFRQ    签发日期 issue date, CHAR(8) YYYYMMDD; '' while the certificate is not issued
JGDM    机构代码 the issuing hospital's institution code
XZQH    行政区划 district: a 6-digit administrative code, or a 9/12-digit township code
        whose first 6 digits are the district
ZT      状态 status: '1' valid, '0' voided (a certificate replaced by a reissue)
SCBZ    删除标志 soft-delete flag: '0' live, '1' deleted
======= ================================================================================

No NULLs: like most systems of its age it codes "nothing" as ''. ``IX_FQSFZH`` is not in
the commission's original schema: the DBA adds it for the adapter, so that the "parent of"
predicate (mother *or* father) and the per-person quality checks are index lookups rather
than scans.
"""

from __future__ import annotations

from sqlalchemy import CHAR, Column, Index, MetaData, SmallInteger, String, Table
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.elements import quoted_name

__all__ = ["CSYXZM", "metadata"]

metadata = MetaData()


def _n(name: str) -> quoted_name:
    """An upper-case name SQLAlchemy must not quote. Unquoted, ``CSYXZM`` is what the
    department file's SQL writes and each database resolves it its own way: PostgreSQL folds
    it to ``csyxzm`` (at creation and in every query alike), MariaDB and SQLite keep it.
    Quoted, PostgreSQL would create a ``"CSYXZM"`` that the plain SQL cannot name."""
    return quoted_name(name, quote=False)


def _text(name: str, length: int, *, default: str | None = "") -> Column[str]:
    """A NOT NULL string column; ``default`` is the server-side default ('' for most)."""
    return Column(_n(name), String(length), nullable=False, server_default=default)


CSYXZM = Table(
    _n("CSYXZM"),
    metadata,
    Column(_n("ZMBH"), String(20), primary_key=True),
    _text("XSESFZH", 18),
    _text("XSEXM", 40),
    _text("MQSFZH", 18, default=None),
    _text("FQSFZH", 18),
    Column(_n("CSRQ"), CHAR(8), nullable=False),
    Column(
        _n("TC"), SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb"), nullable=False
    ),
    Column(_n("QFRQ"), CHAR(8), nullable=False, server_default=""),
    _text("JGDM", 18),
    _text("XZQH", 12, default=None),
    Column(_n("ZT"), CHAR(1), nullable=False, server_default="1"),
    Column(_n("SCBZ"), CHAR(1), nullable=False, server_default="0"),
    Index(_n("IX_XSESFZH"), "XSESFZH"),
    Index(_n("IX_MQSFZH"), "MQSFZH"),
    Index(_n("IX_FQSFZH"), "FQSFZH"),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)
