"""examples/legacy-health: a legacy birth-certificate database and its department file.

The generated population is loaded into the legacy schema (pinyin-initial names, CHAR(8)
dates, 15-digit numbers, lower-case x, township codes, voided and soft-deleted rows) on
SQLite, PostgreSQL and MariaDB, and the department file's SQL is run directly, with the
bind parameters the adapter binds. Every answer, for every citizen, must equal what the
managed health store answers through the Evaluator; the quality checks must name exactly
the people the managed store quarantined; the statistic must count what it counts.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import re
import secrets
import tomllib
from collections.abc import Iterator, Mapping
from itertools import product
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import make_url

from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.departments.health import births
from tongban.adapters.deptfile import DepartmentFile, load_department_file
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.live import LiveSource
from tongban.adapters.store import DepartmentStore
from tongban.primitives.idnumber import check_char
from tongban.primitives.wire import Tri

from .conftest import PG_URL, Generated

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "legacy-health"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306"
BIND = re.compile(r"(?<![:\w]):(\w+)")

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"legacy_health_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loader = _module("load")


def _file() -> dict[str, Any]:
    with (EXAMPLE / "health.toml").open("rb") as fh:
        return tomllib.load(fh)


FILE = _file()
PREDICATES: dict[str, dict[str, Any]] = FILE["predicates"]
CALLS = [
    (name, dict(zip(spec.get("params", {}), values, strict=True)))
    for name, spec in PREDICATES.items()
    for values in product(*spec.get("params", {}).values())
]


def fifteen(number: str) -> str | None:
    """``:subject15``: the first-generation form for people born 1900-1999."""
    return number[:6] + number[8:17] if number[6:8] == "19" else None


def eighteen(stored: str) -> str:
    """A stored number as the adapter normalises it: upper case, 15 digits widened."""
    stored = stored.upper()
    if len(stored) == 15:
        body = stored[:6] + "19" + stored[6:]
        return body + check_char(body)
    return stored


def binds(sql: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Only the parameters the statement names, each of which must be known."""
    names = set(BIND.findall(sql))
    missing = names - set(values)
    assert not missing, f"unbound parameters {missing}"
    return {n: values[n] for n in names}


def answer(conn: Connection, sql: str, values: Mapping[str, Any]) -> Tri:
    """The department file's result rules: one row of one column, 0/false no, non-zero
    yes, NULL unknown, no row no."""
    rows = conn.execute(text(sql), binds(sql, values)).all()
    if not rows:
        return Tri.FALSE
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    value = rows[0][0]
    assert value is None or isinstance(value, int | bool) or str(value).isdigit(), value
    return Tri.UNKNOWN if value is None else Tri.of(bool(value))


def quality_subjects(conn: Connection, values: Mapping[str, Any]) -> dict[str, set[str]]:
    out = {}
    for name, check in FILE["quality"].items():
        result = conn.execute(text(check["sql"]), binds(check["sql"], values))
        assert list(result.keys()) == ["subject"], name
        out[name] = {eighteen(s) for (s,) in result}
    return out


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def managed(small_population: Generated) -> Iterator[DepartmentStore]:
    store = DepartmentStore(DEPARTMENTS["health"], small_population.urls["health"])
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def today(managed: DepartmentStore) -> dt.date:
    declared = managed.get_meta("reference_date")
    assert declared is not None
    return dt.date.fromisoformat(declared)


@pytest.fixture(scope="module")
def subjects(small_population: Generated) -> list[str]:
    return [str(row["id_number"]) for row in small_population.subjects()]


@pytest.fixture(scope="module")
def managed_answers(
    managed: DepartmentStore, subjects: list[str]
) -> dict[tuple[str, str], list[Tri]]:
    evaluator = Evaluator(managed)
    return {
        (name, repr(sorted(params.items()))): evaluator.evaluate_many(name, params, subjects)
        for name, params in CALLS
    }


def _sqlite(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'legacy-health.db'}"


def _server(admin_url: str, drop: str) -> Iterator[str]:
    """A fresh database ``legacy_<random>`` on the server, dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"legacy_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"{make_url(admin_url).get_backend_name()} at {admin_url} is required: {exc}")
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop.format(name)))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def legacy(
    request: pytest.FixtureRequest,
    small_population: Generated,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The population loaded into the legacy schema: (URL, the loader's summary)."""
    if request.param == "sqlite":
        urls = _sqlite(tmp_path_factory.mktemp("legacy"))
    elif request.param == "postgresql":
        urls = _server(PG_URL, "DROP DATABASE IF EXISTS {} WITH (FORCE)")
    else:
        urls = _server(MARIADB_URL, "DROP DATABASE IF EXISTS {}")
    for url in urls:
        console = Console(file=io.StringIO())
        summary = loader.load(small_population.dir, url, seed=7, console=console)
        yield url, summary


@pytest.fixture(scope="module")
def legacy_conn(legacy: tuple[str, dict[str, Any]]) -> Iterator[Connection]:
    engine = create_engine(legacy[0])
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def _values(subject: str, today: dt.date, params: Mapping[str, str]) -> dict[str, Any]:
    return {
        "subject": subject,
        "subject15": fifteen(subject),
        "today": today.isoformat(),
        "today_yyyymmdd": today.strftime("%Y%m%d"),
        **params,
    }


# --- the shape of the legacy data ------------------------------------------------------


def test_the_legacy_data_has_the_legacy_habits(
    legacy: tuple[str, dict[str, Any]], legacy_conn: Connection
) -> None:
    """Otherwise the equivalence below would prove nothing about them."""
    summary = legacy[1]
    assert summary["quarantined"] > 0 and summary["voided"] > 0 and summary["deleted"] > 0

    def count(where: str) -> int:
        sql = f"SELECT COUNT(*) FROM CSYXZM WHERE {where}"
        return int(legacy_conn.execute(text(sql)).scalar_one())

    assert count("1 = 1") == summary["rows"]
    assert count("LENGTH(MQSFZH) = 15") > 0 and count("LENGTH(FQSFZH) = 15") > 0
    assert count("SUBSTR(MQSFZH, 18, 1) = 'x' OR SUBSTR(FQSFZH, 18, 1) = 'x'") > 0
    assert count("LENGTH(XZQH) = 9") > 0 and count("LENGTH(XZQH) = 12") > 0
    assert count("QFRQ = ''") > 0 and count("XSESFZH = ''") > 0
    assert count("ZT = '0'") == summary["voided"]
    assert count("SCBZ = '1'") == summary["deleted"]
    assert count("LENGTH(CSRQ) <> 8") == 0


def test_loading_is_deterministic(small_population: Generated, tmp_path: Path) -> None:
    dumps = []
    for n in (1, 2):
        url = f"sqlite:///{tmp_path / f'{n}.db'}"
        loader.load(small_population.dir, url, console=Console(file=io.StringIO()))
        engine = create_engine(url)
        with engine.connect() as conn:
            dumps.append(conn.execute(text("SELECT * FROM CSYXZM ORDER BY ZMBH")).all())
        engine.dispose()
    assert dumps[0] == dumps[1]


# --- equivalence with the managed store ------------------------------------------------


def test_quality_checks_name_exactly_the_quarantined(
    legacy_conn: Connection, managed: DepartmentStore, today: dt.date
) -> None:
    qs = managed.department.table("quarantine_subjects")
    with managed.connect() as conn:
        quarantined = set(
            conn.execute(select(qs.c.id_number).where(qs.c.table_name == "births")).scalars()
        )
    assert quarantined
    named = quality_subjects(legacy_conn, _values("", today, {}))
    assert set().union(*named.values()) == quarantined
    # The defects the generator injects are each found by their own check.
    for kind in ("bad_check_digit", "mother_under_14", "certificate_before_birth"):
        assert named[kind], kind


@pytest.mark.parametrize(("name", "params"), CALLS, ids=[f"{n}{p}" for n, p in CALLS])
def test_every_answer_equals_the_managed_one(
    legacy_conn: Connection,
    today: dt.date,
    subjects: list[str],
    managed_answers: dict[tuple[str, str], list[Tri]],
    name: str,
    params: dict[str, str],
) -> None:
    expected = managed_answers[(name, repr(sorted(params.items())))]
    named = set().union(*quality_subjects(legacy_conn, _values("", today, {})).values())
    sql = PREDICATES[name]["sql"]
    got = [
        Tri.UNKNOWN
        if subject in named
        else answer(legacy_conn, sql, _values(subject, today, params))
        for subject in subjects
    ]
    wrong = [
        (s[:6] + "…", e.value, g.value)
        for s, e, g in zip(subjects, expected, got, strict=True)
        if e is not g
    ]
    assert not wrong, f"{len(wrong)} of {len(subjects)} differ, e.g. {wrong[:5]}"
    assert set(got) == {Tri.TRUE, Tri.FALSE, Tri.UNKNOWN}  # not trivially equal


def test_statistic_counts_what_the_managed_store_counts(
    legacy_conn: Connection, managed: DepartmentStore, today: dt.date
) -> None:
    statistic = FILE["statistics"]["births_by_district_year"]
    assert statistic["record_bound"] == 1
    sql = statistic["sql"]
    year_of = func.substr(births.c.birth_date, 1, 4)
    seen = 0
    with managed.connect() as conn:
        for year in statistic["params"]["year"]:
            rows = conn.execute(
                select(births.c.district, func.count())
                .where(year_of == year)
                .group_by(births.c.district)
            ).all()
            expected = {d: (n, n) for d, n in rows}
            values = {**_values("", today, {}), "year": year, "record_bound": 1}
            got = {
                cell: (int(value), int(records))
                for cell, value, records in legacy_conn.execute(text(sql), binds(sql, values))
            }
            assert got == expected, year
            seen += sum(n for n, _ in expected.values())
    assert seen > 0


# --- through the adapter: the department file as tongban loads and serves it ----------

VARIABLE = "TONGBAN_LEGACY_HEALTH_URL"


def _department(url: str) -> DepartmentFile:
    return load_department_file(EXAMPLE / "health.toml", env={VARIABLE: url})


def test_the_adapter_loads_the_file(legacy: tuple[str, dict[str, Any]]) -> None:
    dept = _department(legacy[0])
    assert dept.name == "health" and dept.source == legacy[0]
    assert set(dept.predicates) == {"birth_certificate_issued", "children_at_least_youngest_under"}
    assert set(dept.predicates) <= set(DEPARTMENTS["health"].predicates)
    for name, predicate in dept.predicates.items():
        managed = DEPARTMENTS["health"].predicate(name)
        assert dict(predicate.params) == dict(managed.params)
    assert all(set(q.predicates) == set(dept.predicates) for q in dept.quality.values())
    assert dept.statistics["births_by_district_year"].record_bound == 1


def _sample(subjects: list[str], named: set[str]) -> list[str]:
    """Every quarantined person and every fifth other one: each answer costs one statement
    per predicate and one per quality check."""
    return [s for i, s in enumerate(subjects) if s in named or i % 5 == 0]


def test_the_live_source_answers_what_the_managed_store_answers(
    legacy: tuple[str, dict[str, Any]],
    managed: DepartmentStore,
    today: dt.date,
    subjects: list[str],
    managed_answers: dict[tuple[str, str], list[Tri]],
) -> None:
    """tongban's own live source over the file: every answer, the quality report and the
    statistic."""
    url = legacy[0]
    qs = managed.department.table("quarantine_subjects")
    with managed.connect() as conn:
        named = set(conn.execute(select(qs.c.id_number)).scalars())
        year = "2024"
        rows = conn.execute(
            select(births.c.district, func.count())
            .where(func.substr(births.c.birth_date, 1, 4) == year)
            .group_by(births.c.district)
        ).all()
    picked = _sample(subjects, named)
    index = {s: i for i, s in enumerate(subjects)}
    source = LiveSource(_department(url))
    try:
        for name, params in CALLS:
            expected = managed_answers[(name, repr(sorted(params.items())))]
            got = source.evaluate_many(name, picked, params, today=today)
            wrong = [
                (s[:6] + "…", expected[index[s]].value, g.value)
                for s, g in zip(picked, got, strict=True)
                if g is not expected[index[s]]
            ]
            assert not wrong, f"{name} {params}: {len(wrong)} differ: {wrong[:5]}"
        assert source.ready and source.defects == 0
        report = source.quality_report(today=today)
        assert sum(count for count, _ in report.values()) > 0
        cells = source.statistic_rows("births_by_district_year", {"year": year}, today=today)
        assert sorted(cells) == sorted((d, n, n) for d, n in rows)
    finally:
        source.dispose()


# --- the quality checks and the noise, on crafted rows ---------------------------------

_VALID = "110105201403070016"
_MOTHER = "11010519880214038X"  # born 1988-02-14
_FATHER = "11010519860701007X"


def _row(zmbh: str, **columns: str) -> dict[str, Any]:
    row = {
        "ZMBH": zmbh,
        "XSESFZH": _VALID,
        "XSEXM": "王伟",
        "MQSFZH": _MOTHER,
        "FQSFZH": _FATHER,
        "CSRQ": "20140307",
        "TC": 1,
        "QFRQ": "20140310",
        "JGDM": "12110105MB0000001X",
        "XZQH": "110105",
        "ZT": "1",
        "SCBZ": "0",
    }
    row.update(columns)
    return row


def test_crafted_rows(legacy_conn: Connection, today: dt.date) -> None:
    """Each rule on rows built for it, in a transaction that is rolled back."""
    for number in (_VALID, _MOTHER, _FATHER):
        assert check_char(number[:17]) == number[17]
    table = loader._schema().CSYXZM
    mother15, father15 = _MOTHER[:6] + _MOTHER[8:17], _FATHER[:6] + _FATHER[8:17]
    recent = (today - dt.timedelta(days=400)).strftime("%Y%m%d")
    legacy_conn.rollback()  # the reads before ran in an implicit transaction
    transaction = legacy_conn.begin()
    try:
        legacy_conn.execute(text("DELETE FROM CSYXZM"))
        legacy_conn.execute(
            table.insert(),
            [
                # Legacy forms of valid records.
                _row("T1", MQSFZH=_MOTHER.lower(), FQSFZH=father15),
                _row("T2", MQSFZH=mother15, XSESFZH="", QFRQ="", XZQH="110105001002"),
                # Defects on voided and deleted rows.
                _row("T3", XSESFZH=_VALID[:17] + "7", ZT="0"),
                _row("T4", CSRQ="19950101", SCBZ="1", XSESFZH="110105199501010011"),
            ],
        )
        named = quality_subjects(legacy_conn, _values("", today, {}))
        assert set().union(*named.values()) == set(), named

        def ask(name: str, subject: str, **params: str) -> Tri:
            return answer(legacy_conn, PREDICATES[name]["sql"], _values(subject, today, params))

        assert ask("birth_certificate_issued", _VALID) is Tri.TRUE  # T1
        assert ask("birth_certificate_issued", _VALID[:17] + "7") is Tri.FALSE  # voided
        assert ask("birth_certificate_issued", "110105199501010011") is Tri.FALSE  # deleted
        three = {"min_children": "3", "youngest_under_years": "6"}
        two = {"min_children": "2", "youngest_under_years": "6"}
        # T1 and T2 only (lower-case x, 15 digits); ten years old, not under 6.
        assert ask("children_at_least_youngest_under", _MOTHER, **two) is Tri.FALSE
        assert ask("children_at_least_youngest_under", _FATHER, **two) is Tri.FALSE
        legacy_conn.execute(
            table.insert(),
            [_row("R1", CSRQ=recent, QFRQ=recent, MQSFZH=mother15, FQSFZH=_FATHER.lower())],
        )
        for parent in (_MOTHER, _FATHER):
            assert ask("children_at_least_youngest_under", parent, **three) is Tri.TRUE
            under3 = {"min_children": "3", "youngest_under_years": "3"}
            assert ask("children_at_least_youngest_under", parent, **under3) is Tri.TRUE
        legacy_conn.execute(text("UPDATE CSYXZM SET ZT = '0' WHERE ZMBH = 'R1'"))
        assert ask("children_at_least_youngest_under", _MOTHER, **three) is Tri.FALSE
        legacy_conn.execute(text("UPDATE CSYXZM SET ZT = '1', SCBZ = '1' WHERE ZMBH = 'R1'"))
        assert ask("children_at_least_youngest_under", _MOTHER, **three) is Tri.FALSE

        legacy_conn.execute(
            table.insert(),
            [
                _row("D1", XSESFZH="110105201403070017"),  # check digit
                _row("D2", MQSFZH=_MOTHER[:17]),  # 17 characters
                _row("D3", MQSFZH=mother15, CSRQ="20010101", XSESFZH="110105200101010013"),
                _row("D4", QFRQ="20140306"),  # the day before the birth
                _row("D5", CSRQ=(today + dt.timedelta(days=1)).strftime("%Y%m%d"), QFRQ=""),
            ],
        )
        named = quality_subjects(legacy_conn, _values("", today, {}))
        assert named == {
            "bad_check_digit": {"110105201403070017", _MOTHER, _FATHER},
            "malformed_id": {_VALID, _MOTHER[:17], _FATHER},
            "mother_under_14": {"110105200101010013", _MOTHER, _FATHER},
            "certificate_before_birth": {_VALID, _MOTHER, _FATHER},
            "future_birth_date": {_VALID, _MOTHER, _FATHER},
        }
    finally:
        transaction.rollback()
    # Rolled back: the loaded rows are there again.
    assert legacy_conn.execute(text("SELECT COUNT(*) FROM CSYXZM")).scalar_one() > 100


def test_the_mariadb_ddl_is_the_schema(small_population: Generated) -> None:
    """schema_mariadb.sql, run by a DBA, creates the table schema.py creates."""
    ddl = (EXAMPLE / "schema_mariadb.sql").read_text(encoding="utf-8")
    code = re.sub(r"--[^\n]*", "", ddl)  # no string in it holds "--"
    statements = [s for s in code.split(";") if s.strip()]
    assert len(statements) == 1
    columns = (
        "SELECT COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = 'CSYXZM' ORDER BY ORDINAL_POSITION"
    )
    indexes = (
        "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'CSYXZM' ORDER BY INDEX_NAME"
    )
    charset = (
        "SELECT TABLE_COLLATION FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'CSYXZM'"
    )
    seen = []
    for how in ("ddl", "schema.py"):
        for url in _server(MARIADB_URL, "DROP DATABASE IF EXISTS {}"):
            engine = create_engine(url)
            with engine.begin() as conn:
                if how == "ddl":
                    conn.exec_driver_sql(statements[0])
                else:
                    loader._schema().metadata.create_all(conn)
                seen.append(
                    [
                        conn.execute(text(columns)).all(),
                        conn.execute(text(indexes)).all(),
                        conn.execute(text(charset)).scalar_one().split("_")[0],
                    ]
                )
            engine.dispose()
    assert seen[0] == seen[1]
    assert seen[0][2] == "utf8mb4" and len(seen[0][0]) == 12 and len(seen[0][1]) == 4
