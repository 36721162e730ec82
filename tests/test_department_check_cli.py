"""``tongban department check FILE`` as a real process, over a legacy-style database on
SQLite, PostgreSQL and MariaDB: exit 0 and a report on a good file; exit 1 with ONE line
``tongban: FILE:LINE: KEY: what`` for a file that writes, runs two statements or binds an
undeclared parameter (the loader's refusal), for a query the database refuses (its own
message), and for a source it cannot reach; and the tables are unchanged afterwards.

PostgreSQL and MariaDB must be up: these tests fail rather than skip without them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_department_file_serving import (
    BACKENDS,
    EVERYONE,
    UNREACHABLE,
    Legacy,
    close_legacy,
    fifteen,
    open_legacy,
)

EXTRAS = """
[quality.certificate_without_household]
description = "Certificates whose child has no household record."
sql = '''
SELECT XSESFZH AS subject FROM {cert}
 WHERE XSESFZH NOT IN (SELECT GMSFHM FROM {hh})
'''
predicates = ["birth_certificate_issued"]

[statistics.births_by_year]
params = {{ year = ["2021", "2023"] }}
sql = '''
SELECT SUBSTR(CSRQ, 1, 4) AS cell, COUNT(*) AS value, COUNT(*) * :record_bound AS records
  FROM {cert} WHERE SUBSTR(CSRQ, 1, 4) = :year GROUP BY SUBSTR(CSRQ, 1, 4)
'''

[features.mothers]
columns = ["children"]
sql = "SELECT MQSFZH AS subject, COUNT(*) AS children FROM {cert} GROUP BY MQSFZH"
"""
FIRST_SQL = "SELECT COUNT(*) FROM"  # the start of birth_certificate_issued's query (line 9)
LAST_CONDITION = "AND QFRQ <= :today_yyyymmdd"  # its last line (line 11)


@pytest.fixture(params=BACKENDS)
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Legacy]:
    db = open_legacy(request.param, tmp_path)
    try:
        yield db
    finally:
        close_legacy(db)


def _good(legacy: Legacy) -> str:
    base = legacy.department_file("health").read_text(encoding="utf-8")
    return base + EXTRAS.format(cert=legacy.cert, hh=legacy.hh)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env.update(PYTHONIOENCODING="utf-8", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "tongban", "department", "check", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _snapshot(legacy: Legacy) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return legacy.rows(legacy.cert), legacy.rows(legacy.hh)


def _no_numbers(proc: subprocess.CompletedProcess[str]) -> None:
    for number in EVERYONE:
        for form in (number, fifteen(number)):
            assert form not in proc.stdout and form not in proc.stderr


def test_a_good_file_passes_with_a_report(legacy: Legacy) -> None:
    path = legacy.write("good", _good(legacy))
    before = _snapshot(legacy)

    proc = _check(path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    report = proc.stdout
    for key in (
        "predicates.birth_certificate_issued.sql",
        "predicates.children_at_least_youngest_under.sql",
        "statistics.births_by_year.sql",
        "features.mothers.sql",
        "quality.certificate_without_household.sql",
    ):
        assert key in report
    assert "FAIL" not in report
    assert "sample subject: no" in report  # the synthetic subject holds no record
    assert "EXPLAIN" in report
    # The quality check names CHILD_ELSEWHERE: counted and masked, never in full.
    assert "1 named: 110105********" in report
    _no_numbers(proc)
    assert _snapshot(legacy) == before


@pytest.mark.parametrize(
    ("change", "line", "what"),
    [
        (
            (FIRST_SQL, "DELETE FROM"),
            9,
            "expected one SELECT or WITH ... SELECT, found DELETE",
        ),
        (
            (LAST_CONDITION, LAST_CONDITION + ";\nDELETE FROM {cert}"),
            11,
            "more than one statement: a ';' is allowed only at the end",
        ),
        (
            (LAST_CONDITION, "AND QFRQ <= :issued_before"),
            11,
            ":issued_before is not a parameter here (this query can use :subject, "
            ":subject15, :today, :today_yyyymmdd)",
        ),
    ],
    ids=["delete", "two-statements", "undeclared-parameter"],
)
def test_a_refused_file_names_file_line_and_key(
    legacy: Legacy, change: tuple[str, str], line: int, what: str
) -> None:
    old, new = change
    body = _good(legacy).replace(old, new.format(cert=legacy.cert), 1)
    path = legacy.write("refused", body)
    before = _snapshot(legacy)

    proc = _check(path)

    assert proc.returncode == 1
    assert _one_line(proc) == (
        f"tongban: {path}:{line}: predicates.birth_certificate_issued.sql: {what}"
    )
    assert _snapshot(legacy) == before  # nothing ran, nothing changed


DATABASE_SAYS = {
    "sqlite": "OperationalError: no such column: QFRQX",
    "postgresql": "UndefinedColumn 42703: column",
    "mariadb": "OperationalError 1054: Unknown column",
}


def test_a_query_the_database_refuses_names_its_own_message(legacy: Legacy) -> None:
    body = _good(legacy).replace("AND QFRQ <> ''", "AND QFRQX <> ''", 1)
    path = legacy.write("typo", body)
    before = _snapshot(legacy)

    proc = _check(path)

    assert proc.returncode == 1
    line = _one_line(proc)
    assert line.startswith(f"tongban: {path}:8: predicates.birth_certificate_issued.sql: ")
    assert DATABASE_SAYS[legacy.kind] in line
    assert "FAIL" in proc.stdout  # the report is printed all the same
    assert "statistics.births_by_year.sql" in proc.stdout  # and goes on past the problem
    _no_numbers(proc)
    assert _snapshot(legacy) == before


def test_a_statistic_the_database_refuses_is_found_by_explain(legacy: Legacy) -> None:
    body = _good(legacy).replace("GROUP BY SUBSTR(CSRQ, 1, 4)", "GROUP BY NO_SUCH_COLUMN", 1)
    path = legacy.write("stat", body)

    proc = _check(path)

    assert proc.returncode == 1
    line = _one_line(proc)
    assert f"{path}:" in line and ": statistics.births_by_year.sql: " in line
    assert "column" in line.lower()


def test_an_unreachable_source_is_named_at_its_line(legacy: Legacy) -> None:
    body = _good(legacy).replace(legacy.url, UNREACHABLE[legacy.kind], 1)
    path = legacy.write("down", body)

    proc = _check(path)

    assert proc.returncode == 1
    line = _one_line(proc)
    assert line.startswith(f"tongban: {path}:3: source: ")
    assert "unreachable" in line
    assert "s3cret" not in proc.stdout + proc.stderr
