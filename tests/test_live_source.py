"""A live department source (adapters/live.py) over a legacy-style table, on SQLite,
PostgreSQL and MariaDB: right answers (also through the 15-digit form and a lower-case x),
fresh after every committed change, read-only, ``unknown`` and never an exception when the
source fails, back by itself when it heals, and never a subject in a log line.

PostgreSQL and MariaDB must be up: these tests fail rather than skip without them
(``service mariadb start`` starts MariaDB)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import PG_URL
from tongban.adapters.deptfile import DepartmentFile, parse_department_file
from tongban.adapters.live import LiveSource, describe_error
from tongban.primitives.errors import InvalidIdNumber, UnknownParameter, UnknownPredicate
from tongban.primitives.idnumber import make_id, mask
from tongban.primitives.wire import Tri

MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
BACKENDS = ("sqlite", "postgresql", "mariadb")
REGION = "110105"


def _with_check(born: dt.date, check: str) -> str:
    """The first number born that day whose check character is ``check``."""
    for seq in range(1, 1000):
        number = make_id(REGION, born, seq)
        if number[-1] == check:
            return number
    raise AssertionError("no such number")


def _fifteen(number: str) -> str:
    return number[:6] + number[8:17]


# The people in the table, and how the legacy system stored them.
MOTHER_OLD = make_id(REGION, dt.date(1985, 3, 7), 122)  # one row 15-digit, one 18-digit
MOTHER_X = _with_check(dt.date(1990, 6, 1), "X")  # stored with a lower-case x
MOTHER_Q = make_id(REGION, dt.date(1992, 1, 9), 44)
CHILD_A = make_id(REGION, dt.date(2020, 5, 1), 11)
CHILD_B = make_id(REGION, dt.date(2022, 8, 1), 12)
CHILD_C = make_id(REGION, dt.date(2023, 2, 3), 13)
CHILD_D = make_id(REGION, dt.date(2023, 4, 4), 14)  # its record is deleted (SCBZ = '1')
CHILD_OLD = make_id(REGION, dt.date(1995, 9, 9), 15)  # a 1990s record, 15 digits
CHILD_Q = make_id(REGION, dt.date(2024, 1, 1), 16)  # a conflicting record (ZT = '9')
CHILD_TOKEN = make_id(REGION, dt.date(2021, 1, 1), 17)  # stored as a token only
STRANGER = make_id(REGION, dt.date(1970, 1, 1), 18)  # no record at all
EVERYONE = (
    MOTHER_OLD, MOTHER_X, MOTHER_Q, CHILD_A, CHILD_B, CHILD_C, CHILD_D, CHILD_OLD, CHILD_Q,
    CHILD_TOKEN, STRANGER,
)  # fmt: skip


def token(number: str) -> str:
    """A stand-in for a sealed store's blind index."""
    return "T" + hashlib.sha256(number.encode()).hexdigest()[:17]


ROWS = [
    # ID, XSESFZH (child), MQSFZH (mother), CSRQ, QFRQ (certificate), XZQH, ZT, SCBZ
    (1, CHILD_A, _fifteen(MOTHER_OLD), "20200501", "20200510", "110105", "1", "0"),
    (2, CHILD_B, MOTHER_OLD, "20220801", "20220815", "110108", "1", "0"),
    (3, CHILD_C, MOTHER_X.lower(), "20230203", "20230210", "110108", "1", "0"),
    (4, CHILD_D, MOTHER_X.lower(), "20230404", "20230410", "110108", "1", "1"),
    (5, _fifteen(CHILD_OLD), "110105650101001", "19950909", "19950920", "110105", "1", "0"),
    (6, CHILD_Q, MOTHER_Q, "20240101", "20240105", "110101", "1", "0"),
    (7, CHILD_Q, MOTHER_Q, "20240101", "", "110101", "9", "0"),
    (8, token(CHILD_TOKEN), "110105650101002", "20210101", "20210105", "110101", "1", "0"),
]

DEPARTMENT = """\
name = "health"
title = "卫健委 Health commission"
source = "{url}"
statement_timeout_ms = {timeout}

[predicates.birth_certificate_issued]
sql = \"\"\"
SELECT COUNT(*) FROM {t}
 WHERE XSESFZH IN (:subject, :subject15) AND ZT = '1' AND SCBZ = '0'
   AND QFRQ <> '' AND QFRQ <= :today_yyyymmdd
\"\"\"

[predicates.children_at_least]
params = {{ min_children = ["1", "2", "3"] }}
sql = \"\"\"
SELECT CASE WHEN COUNT(*) >= CAST(:min_children AS DECIMAL) THEN 1 ELSE 0 END FROM {t}
 WHERE UPPER(MQSFZH) IN (:subject, :subject15) AND ZT = '1' AND SCBZ = '0'
\"\"\"

[predicates.mother_of]
related = true
sql = \"\"\"
SELECT COUNT(*) FROM {t} WHERE UPPER(MQSFZH) IN (:subject, :subject15)
   AND UPPER(XSESFZH) IN (:related, :related15) AND SCBZ = '0'
\"\"\"

[predicates.children_rows]
description = "A defect: one row per child instead of one value."
sql = "SELECT XSESFZH FROM {t} WHERE UPPER(MQSFZH) IN (:subject, :subject15)"

[predicates.status_text]
description = "A defect: text instead of a number."
sql = "SELECT 'yes' FROM {t} WHERE XSESFZH = :subject"

[predicates.slow]
sql = "{slow}"

[quality.conflicting_status]
description = "A child with a record in an unknown status."
sql = "SELECT XSESFZH AS subject FROM {t} WHERE ZT = '9' -- a trailing comment"
predicates = ["birth_certificate_issued"]

[statistics.births_by_year]
params = {{ year = ["2020", "2022", "2023"] }}
sql = \"\"\"
SELECT XZQH AS cell, COUNT(*) AS value, COUNT(*) * :record_bound AS records FROM {t}
 WHERE SUBSTR(CSRQ, 1, 4) = :year AND ZT = '1' AND SCBZ = '0' GROUP BY XZQH ORDER BY XZQH
\"\"\"

[features.mothers]
columns = ["children"]
sql = "SELECT MQSFZH AS subject, COUNT(*) AS children FROM {t} WHERE SCBZ = '0' GROUP BY MQSFZH"
"""

SLOW = {
    "sqlite": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100000000)"
    " SELECT COUNT(*) FROM c WHERE :subject IS NOT NULL",
    "postgresql": "SELECT COUNT(*) FROM (SELECT pg_sleep(5)) AS s"
    " WHERE CAST(:subject AS TEXT) IS NOT NULL",
    "mariadb": "SELECT SLEEP(5) FROM {t} WHERE XSESFZH = :subject",
}
UNREACHABLE = {
    "sqlite": "sqlite:////nonexistent/tongban/registry.db",
    "postgresql": "postgresql+psycopg://reader:s3cret@127.0.0.1:1/test",
    "mariadb": "mysql+pymysql://reader:s3cret@127.0.0.1:1/test",
}
CREATE = """CREATE TABLE {t} (
  ID INTEGER PRIMARY KEY,
  XSESFZH VARCHAR(18) NOT NULL,
  MQSFZH VARCHAR(18) NOT NULL,
  CSRQ CHAR(8) NOT NULL,
  QFRQ CHAR(8) NOT NULL,
  XZQH CHAR(6) NOT NULL,
  ZT CHAR(1) NOT NULL,
  SCBZ CHAR(1) NOT NULL
)"""
INSERT = (
    "INSERT INTO {t} (ID, XSESFZH, MQSFZH, CSRQ, QFRQ, XZQH, ZT, SCBZ)"
    " VALUES (:i, :x, :m, :c, :q, :z, :zt, :s)"
)


@dataclass
class Legacy:
    """A department's legacy table on one backend, with an administrator's connection
    beside the adapter's."""

    kind: str
    url: str
    admin: Engine
    table: str
    sources: list[LiveSource] = field(default_factory=list)

    def run(self, sql: str, params: dict[str, object] | None = None) -> None:
        with self.admin.begin() as conn:
            conn.execute(text(sql.format(t=self.table)), params or {})

    def count(self) -> int:
        with self.admin.connect() as conn:
            return int(conn.execute(text(f"SELECT COUNT(*) FROM {self.table}")).scalar_one())

    def department(self, *, timeout: int = 2000) -> DepartmentFile:
        body = DEPARTMENT.format(
            url=self.url, timeout=timeout, t=self.table, slow=SLOW[self.kind].format(t=self.table)
        )
        return parse_department_file(body, f"{self.kind}.toml")

    def source(
        self,
        *,
        timeout: int = 2000,
        url: str | None = None,
        subject_form: Callable[[str], str] | None = None,
    ) -> LiveSource:
        live = LiveSource(self.department(timeout=timeout), url, subject_form=subject_form)
        self.sources.append(live)
        return live


def _server_engine(kind: str, tmp_path: Path) -> tuple[str, Engine]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'birth_registry.db'}"
        return url, create_engine(url)
    url, what = (PG_URL, "PostgreSQL") if kind == "postgresql" else (MARIADB_URL, "MariaDB")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        hint = " (service mariadb start)" if kind == "mariadb" else ""
        pytest.fail(f"{what} at {url} is required for these tests{hint}: {exc}")
    return url, engine


@pytest.fixture(params=BACKENDS)
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Legacy]:
    url, admin = _server_engine(request.param, tmp_path)
    table = f"csyxzm_{secrets.token_hex(4)}"
    db = Legacy(request.param, url, admin, table)
    db.run(CREATE)
    names = ("i", "x", "m", "c", "q", "z", "zt", "s")
    with admin.begin() as conn:
        conn.execute(text(INSERT.format(t=table)), [dict(zip(names, r, strict=True)) for r in ROWS])
    try:
        yield db
    finally:
        for live in db.sources:
            live.dispose()
        for name in (table, f"{table}_gone"):
            db.run(f"DROP TABLE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log line of the test, checked afterwards for anything about a person."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    forms = {n for p in EVERYONE for n in (p, p.lower(), _fifteen(p), token(p))}
    records = caplog.get_records("call")  # (caplog.records, here, is the teardown's)
    assert records, "nothing was logged: is the logger's level right?"
    for record in records:
        message = record.getMessage()
        assert not any(n in message for n in forms), message
        assert "s3cret" not in message, message


# --- answers -----------------------------------------------------------------------------


def test_answers_yes_and_no_including_the_15_digit_form_and_a_lower_case_x(
    legacy: Legacy,
) -> None:
    live = legacy.source()
    cert = "birth_certificate_issued"
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE
    assert live.evaluate(cert, CHILD_OLD) is Tri.TRUE  # stored as 15 digits: :subject15
    assert live.evaluate(cert, CHILD_D) is Tri.FALSE  # its record is deleted
    assert live.evaluate(cert, STRANGER) is Tri.FALSE  # no row
    # :today_yyyymmdd: before the certificate was signed, there was none.
    assert live.evaluate(cert, CHILD_A, today=dt.date(2020, 5, 9)) is Tri.FALSE
    assert live.evaluate(cert, CHILD_A, today=dt.date(2020, 5, 10)) is Tri.TRUE
    # Accepted in lower case too, like every ID number.
    assert live.evaluate(cert, CHILD_A.lower()) is Tri.TRUE

    at_least = "children_at_least"
    # One record under the 15-digit number, one under the 18-digit one.
    assert live.evaluate(at_least, MOTHER_OLD, {"min_children": "2"}) is Tri.TRUE
    assert live.evaluate(at_least, MOTHER_OLD, {"min_children": "3"}) is Tri.FALSE
    # Stored with a lower-case x, which the department's SQL upper-cases.
    assert live.evaluate(at_least, MOTHER_X, {"min_children": "1"}) is Tri.TRUE
    assert live.evaluate(at_least, MOTHER_X, {"min_children": "2"}) is Tri.FALSE  # one deleted

    assert live.evaluate("mother_of", MOTHER_OLD, related18=CHILD_A) is Tri.TRUE
    assert live.evaluate("mother_of", MOTHER_X, related18=CHILD_A) is Tri.FALSE

    # One of the file's statements, run as the adapter runs them (for tools that check a file).
    binds = {"subject": CHILD_A, "subject15": None, "today_yyyymmdd": "20991231"}
    width, rows = live.run(live.dept.predicates[cert].sql, binds, 2)
    assert (width, [tuple(r) for r in rows]) == (1, [(1,)])

    batch = [CHILD_A, CHILD_OLD, CHILD_D, STRANGER, CHILD_B]
    assert live.evaluate_many(cert, batch) == [live.evaluate(cert, s) for s in batch]
    assert live.evaluate_many(cert, batch) == [Tri.TRUE, Tri.TRUE, Tri.FALSE, Tri.FALSE, Tri.TRUE]
    assert live.defects == 0 and live.ready


def test_calls_are_checked_before_any_sql(legacy: Legacy) -> None:
    live = legacy.source(url=UNREACHABLE[legacy.kind])  # nothing may be asked of it
    with pytest.raises(UnknownParameter):
        live.evaluate("children_at_least", MOTHER_OLD, {"min_children": "9"})
    with pytest.raises(UnknownParameter):
        live.evaluate("children_at_least", MOTHER_OLD)
    with pytest.raises(UnknownParameter):
        live.evaluate("mother_of", MOTHER_OLD)  # needs a related person
    with pytest.raises(UnknownParameter):
        live.evaluate("birth_certificate_issued", CHILD_A, related18=MOTHER_OLD)
    with pytest.raises(UnknownPredicate):
        live.evaluate("no_such_predicate", CHILD_A)
    with pytest.raises(InvalidIdNumber):
        live.evaluate("birth_certificate_issued", CHILD_A[:17] + "0")
    assert live.ready  # nothing was tried


def test_an_update_changes_the_very_next_answer(legacy: Legacy) -> None:
    live = legacy.source()
    cert = "birth_certificate_issued"
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE
    legacy.run("UPDATE {t} SET SCBZ = '1' WHERE XSESFZH = :x", {"x": CHILD_A})
    assert live.evaluate(cert, CHILD_A) is Tri.FALSE
    legacy.run("UPDATE {t} SET SCBZ = '0' WHERE XSESFZH = :x", {"x": CHILD_A})
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE
    assert live.evaluate(cert, STRANGER) is Tri.FALSE
    legacy.run(
        INSERT,
        {"i": 99, "x": STRANGER, "m": MOTHER_Q, "c": "19700101", "q": "19700105", "z": REGION,
         "zt": "1", "s": "0"},
    )  # fmt: skip
    assert live.evaluate(cert, STRANGER) is Tri.TRUE


def test_a_renamed_table_answers_unknown_and_recovers_by_itself(
    legacy: Legacy, quiet_logs: pytest.LogCaptureFixture
) -> None:
    live = legacy.source()
    cert = "birth_certificate_issued"
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE
    legacy.run("ALTER TABLE {t} RENAME TO {t}_gone")
    assert live.evaluate(cert, CHILD_A) is Tri.UNKNOWN  # not FALSE, and no exception
    assert live.evaluate(cert, STRANGER) is Tri.UNKNOWN
    assert not live.ready
    assert live.evaluate_many(cert, [CHILD_A, STRANGER, CHILD_B]) == [Tri.UNKNOWN] * 3
    assert live.health()["reachable"] is True  # the server is up; the table is not there
    assert live.defects == 0  # a failing source is not a defect of the file
    assert any("unavailable" in r.getMessage() for r in quiet_logs.records)

    legacy.run(f"ALTER TABLE {legacy.table}_gone RENAME TO {legacy.table}")
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE  # the same LiveSource
    assert live.evaluate(cert, STRANGER) is Tri.FALSE
    assert live.ready


def test_the_session_is_read_only(legacy: Legacy) -> None:
    live = legacy.source()
    before = legacy.count()
    insert = text(INSERT.format(t=legacy.table))
    row = {"i": 50, "x": STRANGER, "m": MOTHER_Q, "c": "19700101", "q": "19700105", "z": REGION,
           "zt": "1", "s": "0"}  # fmt: skip
    # The transaction every answer is read in.
    with pytest.raises(DBAPIError), live.reading() as conn:
        conn.execute(insert, row)
    with pytest.raises(DBAPIError), live.reading() as conn:
        conn.execute(text(f"UPDATE {legacy.table} SET ZT = '0'"))
    # Any connection of the source's engine, even outside that helper, and committing.
    with pytest.raises(DBAPIError), live.engine.connect() as conn:
        conn.execute(insert, row)
        conn.commit()
    with pytest.raises(DBAPIError), live.engine.connect() as conn:
        conn.execute(text(f"CREATE TABLE {legacy.table}_new (a INTEGER)"))
        conn.commit()
    assert legacy.count() == before
    with legacy.admin.connect() as conn:
        zt = conn.execute(text(f"SELECT COUNT(*) FROM {legacy.table} WHERE ZT = '0'")).scalar()
    assert zt == 0
    # And the source still answers.
    assert live.evaluate("birth_certificate_issued", CHILD_A) is Tri.TRUE


def test_a_defect_answers_unknown_and_is_counted(
    legacy: Legacy, quiet_logs: pytest.LogCaptureFixture
) -> None:
    live = legacy.source()
    assert live.evaluate("children_rows", MOTHER_OLD) is Tri.UNKNOWN  # two rows
    assert live.defects == 1
    assert live.evaluate("status_text", CHILD_A) is Tri.UNKNOWN  # text
    assert live.defects == 2
    assert live.evaluate("children_rows", STRANGER) is Tri.FALSE  # no row is no
    assert live.evaluate_many("children_rows", [MOTHER_OLD, STRANGER]) == [Tri.UNKNOWN, Tri.FALSE]
    assert live.defects == 3
    assert live.ready  # the source itself is fine
    defects = [r.getMessage() for r in quiet_logs.records if "defect" in r.getMessage()]
    assert len(defects) == 3
    assert "returned several rows" in defects[0] and "children_rows" in defects[0]


def test_a_slow_statement_times_out_as_unknown(
    legacy: Legacy, quiet_logs: pytest.LogCaptureFixture
) -> None:
    live = legacy.source(timeout=300)
    assert live.evaluate("birth_certificate_issued", CHILD_A) is Tri.TRUE  # connected
    start = time.monotonic()
    assert live.evaluate("slow", CHILD_A) is Tri.UNKNOWN
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 2.0, elapsed
    assert not live.ready
    # The connection, or the next one, answers again at once.
    assert live.evaluate("birth_certificate_issued", CHILD_A) is Tri.TRUE
    assert live.ready


def test_an_unreachable_source_answers_unknown(
    legacy: Legacy, quiet_logs: pytest.LogCaptureFixture
) -> None:
    live = legacy.source(url=UNREACHABLE[legacy.kind])
    start = time.monotonic()
    assert live.evaluate("birth_certificate_issued", CHILD_A) is Tri.UNKNOWN
    assert live.evaluate_many("birth_certificate_issued", [CHILD_A, CHILD_B]) == [Tri.UNKNOWN] * 2
    assert time.monotonic() - start < 5
    assert not live.ready
    health = live.health()
    assert health["reachable"] is False and health["kind"] == live.kind
    detail = str(health["detail"])
    assert "unreachable" in detail
    assert "s3cret" not in detail and "s3cret" not in repr(live)


def test_health_names_the_source_without_its_password(legacy: Legacy) -> None:
    live = legacy.source()
    health = live.health()
    assert health["reachable"] is True and health["ready"] is True
    server = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}[legacy.kind]
    assert server in str(health["detail"])
    assert health["kind"] == ("mysql" if legacy.kind == "mariadb" else legacy.kind)


def test_quality_checks_make_the_named_subject_unknown(legacy: Legacy) -> None:
    live = legacy.source()
    cert = "birth_certificate_issued"
    # CHILD_Q has a certificate, and a second record in an unknown status.
    assert live.evaluate(cert, CHILD_Q) is Tri.UNKNOWN
    assert live.evaluate_many(cert, [CHILD_A, CHILD_Q]) == [Tri.TRUE, Tri.UNKNOWN]
    # A predicate the check does not cover answers as before, about the same child.
    assert live.evaluate("mother_of", MOTHER_Q, related18=CHILD_Q) is Tri.TRUE
    assert live.quality_report() == {"conflicting_status": (1, [mask(CHILD_Q)])}
    assert live.defects == 0 and live.ready

    legacy.run("DELETE FROM {t} WHERE ZT = '9'")  # the department resolves the conflict
    assert live.evaluate(cert, CHILD_Q) is Tri.TRUE
    assert live.quality_report() == {"conflicting_status": (0, [])}


def test_statistics_features_plans_and_the_read_time(legacy: Legacy) -> None:
    live = legacy.source()
    assert live.statistic_rows("births_by_year", {"year": "2023"}) == [("110108", 1, 1)]
    assert live.statistic_rows("births_by_year", {"year": "2022"}) == [("110108", 1, 1)]
    with pytest.raises(UnknownParameter):
        live.statistic_rows("births_by_year", {"year": "1999"})

    rows = sorted(live.feature_rows("mothers"))
    # Normalised: the 15-digit and the 18-digit rows of one mother, and the lower-case x.
    assert (MOTHER_OLD, (1.0,)) in rows and rows.count((MOTHER_OLD, (1.0,))) == 2
    assert (MOTHER_X, (1.0,)) in rows
    assert (MOTHER_Q, (2.0,)) in rows
    assert all(isinstance(s, str) and len(s) == 18 for s, _v in rows)

    plan = live.explain(
        live.dept.statistics["births_by_year"].sql, {"year": "2023", "record_bound": 1}
    )
    assert plan and all(isinstance(line, str) and line for line in plan)

    before = dt.datetime.now(dt.UTC)
    live.evaluate("birth_certificate_issued", CHILD_A)
    read_at = dt.datetime.fromisoformat(live.as_of())
    assert before - dt.timedelta(seconds=1) <= read_at <= dt.datetime.now(dt.UTC)


def test_subject_form_binds_tokens_and_no_15_digit_form(legacy: Legacy) -> None:
    """The hook a sealed managed store uses: :subject is the token, :subject15 is NULL."""
    live = legacy.source(subject_form=token)
    cert = "birth_certificate_issued"
    assert live.evaluate(cert, CHILD_TOKEN) is Tri.TRUE
    assert live.evaluate(cert, CHILD_A) is Tri.FALSE  # stored as a number, not a token
    assert live.evaluate(cert, CHILD_OLD) is Tri.FALSE  # no 15-digit form is bound
    plain = legacy.source()
    assert plain.evaluate(cert, CHILD_TOKEN) is Tri.FALSE


def test_a_killed_connection_heals_without_a_restart(legacy: Legacy) -> None:
    if legacy.kind == "sqlite":
        pytest.skip("SQLite has no server connection to kill")
    live = legacy.source()
    cert = "birth_certificate_issued"
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE
    which, kill = {
        "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend(:p)"),
        "mariadb": ("SELECT CONNECTION_ID()", "KILL :p"),
    }[legacy.kind]
    with live.reading() as conn:
        backend = conn.exec_driver_sql(which).scalar()
    legacy.run(kill, {"p": backend})
    assert live.evaluate(cert, CHILD_A) is Tri.TRUE  # a new connection, found by pre-ping
    with live.reading() as conn:
        assert conn.exec_driver_sql(which).scalar() != backend


NAP_SECONDS = {"now": 0.0}


def test_an_answer_that_arrives_after_the_timeout_is_not_trusted(tmp_path: Path) -> None:
    """MySQL's SLEEP(), interrupted by max_execution_time, returns 1 instead of failing:
    whatever a statement that took the whole timeout says, the answer is unknown. (Here a
    Python function sleeps, which SQLite's progress handler cannot interrupt.)"""
    path = tmp_path / "slow.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a INTEGER)")
    conn.close()
    dept = parse_department_file(
        f'name = "slow"\ntitle = "Slow"\nsource = "sqlite:///{path}"\n'
        'statement_timeout_ms = 200\n[predicates.nap]\nsql = "SELECT nap(:subject)"\n',
        "slow.toml",
    )
    live = LiveSource(dept)

    def nap(_subject: str) -> int:
        time.sleep(NAP_SECONDS["now"])
        return 1

    event.listen(live.engine, "connect", lambda c, _r: c.create_function("nap", 1, nap))
    try:
        assert live.evaluate("nap", CHILD_A) is Tri.TRUE
        NAP_SECONDS["now"] = 0.25
        assert live.evaluate("nap", CHILD_A) is Tri.UNKNOWN
        assert not live.ready
    finally:
        NAP_SECONDS["now"] = 0.0
        live.dispose()


def test_a_driver_error_is_described_without_the_value_it_echoes() -> None:
    """PostgreSQL quotes a value it cannot convert; the description drops it, and never
    carries SQLAlchemy's rendering with the statement and its parameters."""
    engine = create_engine(PG_URL)
    try:
        with pytest.raises(DBAPIError) as info, engine.connect() as conn:
            conn.execute(text("SELECT CAST(:v AS BIGINT)"), {"v": MOTHER_X})
    finally:
        engine.dispose()
    assert MOTHER_X in str(info.value)  # what a careless log line would carry
    described = describe_error(info.value)
    assert MOTHER_X not in described and MOTHER_X[:17] not in described
    assert described.startswith("InvalidTextRepresentation 22P02: invalid input syntax")
