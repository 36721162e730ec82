"""Department files (adapters/deptfile.py): what loads, and every refusal, each one line
``FILE:LINE: KEY: what is wrong`` that names no value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from tongban.adapters.deptfile import (
    DepartmentFile,
    DepartmentFileError,
    check_select,
    key_line,
    load_department_file,
    mask_url,
    parse_department_file,
)
from tongban.primitives.errors import TongbanError, UnknownParameter, UnknownPredicate

FILE = "health.toml"
ID = "110105199003071234"  # shaped like an ID number: must never appear in a refusal

GOOD = """\
name = "health"                               # line 1
title = "卫健委 Health commission"
source = "sqlite:////srv/health/birth.db"
statement_timeout_ms = 1500

[predicates.birth_certificate_issued]
description = "The subject, as a child, has a medical birth certificate."
sql = \"\"\"
SELECT COUNT(*) FROM CSYXZM
 WHERE XSESFZH IN (:subject, :subject15) AND ZT = '1' AND SCBZ = '0'
   AND QFRQ <> '' AND QFRQ <= :today_yyyymmdd
\"\"\"

[predicates.children_at_least]
params = { min_children = ["2", "3"] }
sql = "SELECT COUNT(*) >= CAST(:min_children AS INTEGER) FROM CSYXZM WHERE MQSFZH = :subject"

[predicates.mother_of]
related = true
sql = "SELECT COUNT(*) FROM CSYXZM WHERE MQSFZH = :subject AND XSESFZH = :related"

[quality.mother_under_14]
description = "A mother recorded as younger than 14 at the birth."
sql = "SELECT MQSFZH AS subject FROM CSYXZM WHERE CSRQ < '19000101'"
predicates = ["children_at_least"]

[quality.duplicate_child]
sql = "SELECT XSESFZH AS subject FROM CSYXZM GROUP BY XSESFZH HAVING COUNT(*) > 1"

[statistics.births_by_district_year]
params = { year = ["2023", "2024"] }
record_bound = 1
sql = \"\"\"
SELECT SUBSTR(XZQH, 1, 6) AS cell, COUNT(*) AS value, COUNT(*) * :record_bound AS records
  FROM CSYXZM WHERE SUBSTR(CSRQ, 1, 4) = :year GROUP BY SUBSTR(XZQH, 1, 6)
\"\"\"

[features.outreach]
columns = ["children", "youngest_birth"]
sql = "SELECT MQSFZH AS subject, COUNT(*), MAX(CSRQ) FROM CSYXZM GROUP BY MQSFZH"
"""

# The lines of GOOD that refusals point at.
L_SOURCE = 3
L_CERT_HEADER = 6
L_CERT_SQL = 8
L_CHILDREN_PARAMS = 15


def load(source: str, **kw: object) -> DepartmentFile:
    return parse_department_file(source, FILE, **kw)  # type: ignore[arg-type]


def refusal(source: str, **kw: object) -> str:
    with pytest.raises(DepartmentFileError) as info:
        load(source, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert ID not in message
    assert re.fullmatch(r"[^:]+:\d+: [^:]+: .+", message), message
    return message


def replace_sql(new_sql: str, name: str = "birth_certificate_issued") -> str:
    """GOOD with one predicate's (multi-line) sql replaced, keeping the line layout."""
    start = GOOD.index(f"[predicates.{name}]")
    begin = GOOD.index('sql = """\n', start) + len('sql = """\n')
    end = GOOD.index('"""', begin)
    return GOOD[:begin] + new_sql + GOOD[end:]


# --- a good file -------------------------------------------------------------------------


def test_a_good_file_loads_with_everything_resolved() -> None:
    dept = load(GOOD)
    assert (dept.name, dept.title) == ("health", "卫健委 Health commission")
    assert dept.source == "sqlite:////srv/health/birth.db"
    assert dept.source_kind == "sqlite"
    assert dept.statement_timeout_ms == 1500
    assert dept.path is None
    assert list(dept.predicates) == ["birth_certificate_issued", "children_at_least", "mother_of"]

    cert = dept.predicates["birth_certificate_issued"]
    assert cert.binds == {"subject", "subject15", "today_yyyymmdd"}
    assert not cert.related and cert.params == {}
    assert cert.sql.startswith("SELECT COUNT(*) FROM CSYXZM")
    children = dept.predicates["children_at_least"]
    assert children.params == {"min_children": ("2", "3")}
    assert children.check_params({"min_children": "3"}) == {"min_children": "3"}
    with pytest.raises(UnknownParameter):
        children.check_params({"min_children": "4"})
    with pytest.raises(UnknownParameter):
        children.check_params({})
    assert dept.predicates["mother_of"].related
    assert dept.predicates["mother_of"].describe()["related"] is True

    # A quality check names the predicates it covers; without a list, it covers them all.
    assert dept.quality["mother_under_14"].predicates == ("children_at_least",)
    assert dept.quality["duplicate_child"].predicates == tuple(dept.predicates)
    assert [q.name for q in dept.checks_for("children_at_least")] == [
        "mother_under_14",
        "duplicate_child",
    ]
    assert [q.name for q in dept.checks_for("mother_of")] == ["duplicate_child"]

    stat = dept.statistics["births_by_district_year"]
    assert stat.record_bound == 1 and stat.params == {"year": ("2023", "2024")}
    assert stat.binds == {"record_bound", "year"}
    assert dept.features["outreach"].columns == ("children", "youngest_birth")
    with pytest.raises(UnknownPredicate):
        dept.predicate("no_such_predicate")


def test_defaults_managed_source_and_env_substitution() -> None:
    minimal = 'name = "police"\ntitle = "公安"\nsource = "managed"\n'
    dept = load(minimal)
    assert (dept.source, dept.source_kind, dept.statement_timeout_ms) == (
        "managed",
        "managed",
        2000,
    )
    assert dept.predicates == {} and dept.quality == {}

    env = {"HEALTH_DB_URL": "postgresql+psycopg://reader:s3cret@db.example:5432/health"}
    dept = load(GOOD.replace("sqlite:////srv/health/birth.db", "${HEALTH_DB_URL}"), env=env)
    assert dept.source == env["HEALTH_DB_URL"]
    assert dept.source_kind == "postgresql"
    # The password is in the resolved source, and nowhere a person reads it.
    assert "s3cret" not in repr(dept)
    assert dept.masked_source == "postgresql+psycopg://reader:***@db.example:5432/health"


def test_the_checked_sql_binds_what_sqlalchemy_binds() -> None:
    """The names the check finds are exactly those sqlalchemy.text() will bind, and
    colons inside strings, identifiers and comments are left alone."""
    sql = """SELECT COUNT(*) FROM t -- a comment: with :colons
     WHERE a = '10:30' AND "odd:name" = :subject AND b::text = :today /* :nope */;"""
    checked = check_select(sql)
    assert set(checked.binds) == {"subject", "today"}
    assert set(text(checked.text).compile().params) == {"subject", "today"}
    rendered = str(text(checked.text).compile())
    assert "'10:30'" in rendered and '"odd:name"' in rendered and ":nope" in rendered
    assert not checked.text.endswith(";")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'DELETE FROM t; UPDATE t SET a = 1' FROM t WHERE a = :subject",
        "SELECT COUNT(*) FROM t WHERE a = :subject -- we never DELETE here",
        "SELECT COUNT(*) FROM t WHERE a = :subject /* INSERT, DROP */",
        'SELECT COUNT(*) FROM t WHERE "update" = :subject',
        "SELECT COUNT(*) FROM t WHERE REPLACE(a, 'x', 'X') = :subject;",
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3)"
        " SELECT COUNT(*) FROM c, t WHERE t.a IN (:subject, :subject15) AND n IN (1, 2)",
        "(SELECT COUNT(*) FROM t WHERE a = :subject)",
        "select count(*) from t where a = :subject and b = 'it''s'",
        "-- leading comment\nSELECT COUNT(*) FROM t WHERE a = :subject; -- trailing comment",
    ],
)
def test_read_only_selects_are_accepted(sql: str) -> None:
    assert "subject" in check_select(sql).binds


def test_load_reads_source_file_relative_to_the_department_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "health-db-url").write_text(
        "mysql+pymysql://reader:s3cret@127.0.0.1:3306/birth_registry\nsecond line ignored\n"
    )
    path = tmp_path / "health.toml"
    path.write_text(
        GOOD.replace(f'source = "{load(GOOD).source}"', 'source_file = "secrets/health-db-url"')
    )
    dept = load_department_file(path)
    assert dept.source == "mysql+pymysql://reader:s3cret@127.0.0.1:3306/birth_registry"
    assert dept.source_kind == "mysql"
    assert dept.path == path

    (secrets / "health-db-url").unlink()
    with pytest.raises(DepartmentFileError) as info:
        load_department_file(path)
    assert str(info.value).startswith(f"{path}:{L_SOURCE}: source_file: cannot read ")


def test_load_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(DepartmentFileError, match=r":1: \(file\): cannot read"):
        load_department_file(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "health"\ntitle = "\xe9"\n')
    with pytest.raises(DepartmentFileError, match=r"latin1.toml:2: \(file\): not UTF-8"):
        load_department_file(bad)


# --- refusals ----------------------------------------------------------------------------


def test_refusal_is_a_tongban_error_rendering_to_a_problem() -> None:
    with pytest.raises(DepartmentFileError) as info:
        load(GOOD.replace('title = "卫健委 Health commission"\n', ""))
    assert isinstance(info.value, TongbanError)
    problem = info.value.to_problem()
    assert problem["type"].endswith("/department-file") and problem["status"] == 500
    assert problem["detail"] == f"{FILE}:1: (file): missing required key title"


def test_invalid_toml_names_the_line() -> None:
    broken = GOOD.replace("statement_timeout_ms = 1500", "statement_timeout_ms = = 1500")
    assert refusal(broken) == f"{FILE}:4: (toml): invalid TOML: Invalid value at column 24"
    unclosed = GOOD + '\n[predicates.x]\nsql = "SELECT\n'
    assert refusal(unclosed).startswith(f"{FILE}:{GOOD.count(chr(10)) + 3}: (toml): invalid TOML")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("statement_timeout_ms = 1500", 'statement_timeout_ms = 1500\nowner = "ops"'),
            f"{FILE}:5: owner: unknown key; expected one of features, name, predicates, quality,"
            " source, source_file, statement_timeout_ms, statistics, title",
        ),
        (
            ('description = "The subject, as a child,', 'descripton = "The subject, as a child,'),
            f"{FILE}:7: predicates.birth_certificate_issued.descripton: unknown key; expected one"
            " of dates, description, params, related, sql",
        ),
        (
            ("record_bound = 1", "record_bound = 1\nbound = 2"),
            f"{FILE}:33: statistics.births_by_district_year.bound: unknown key; expected one of"
            " dates, params, record_bound, sql",
        ),
        (
            (
                'params = { min_children = ["2", "3"] }',
                'params = { min_children = ["2", "3"], x = [] }',
            ),
            f"{FILE}:{L_CHILDREN_PARAMS}: predicates.children_at_least.params.x: expected a"
            " non-empty list of strings",
        ),
    ],
)
def test_unknown_keys_and_bad_nested_values_name_key_and_line(
    edit: tuple[str, str], expected: str
) -> None:
    assert refusal(GOOD.replace(*edit)) == expected


def test_missing_required_keys_point_at_their_table() -> None:
    no_sql = GOOD.replace(
        'sql = "SELECT COUNT(*) FROM CSYXZM WHERE MQSFZH = :subject AND XSESFZH = :related"', ""
    )
    assert refusal(no_sql) == f"{FILE}:18: predicates.mother_of: missing required key sql"
    no_columns = GOOD.replace('columns = ["children", "youngest_birth"]\n', "")
    assert refusal(no_columns).endswith("features.outreach: missing required key columns")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("statement_timeout_ms = 1500", 'statement_timeout_ms = "1500"'),
         "4: statement_timeout_ms: expected an integer, found a string"),
        (("statement_timeout_ms = 1500", "statement_timeout_ms = true"),
         "4: statement_timeout_ms: expected an integer, found true or false"),
        (("statement_timeout_ms = 1500", "statement_timeout_ms = 600000"),
         "4: statement_timeout_ms: expected milliseconds from 1 to 60000"),
        (("related = true", 'related = "yes"'),
         "19: predicates.mother_of.related: expected true or false, found a string"),
        (('name = "health"', "name = 7"), "1: name: expected a string, found an integer"),
        (('params = { min_children = ["2", "3"] }', 'params = { min_children = [2, 3] }'),
         f"{L_CHILDREN_PARAMS}: predicates.children_at_least.params.min_children: expected a"
         " non-empty list of strings"),
        (('params = { min_children = ["2", "3"] }', 'params = ["2", "3"]'),
         f"{L_CHILDREN_PARAMS}: predicates.children_at_least.params: expected a table, found a"
         " list"),
        (('params = { min_children = ["2", "3"] }', 'params = { min_children = ["2", "2"] }'),
         f"{L_CHILDREN_PARAMS}: predicates.children_at_least.params.min_children: a value is"
         " listed twice"),
        (("record_bound = 1", "record_bound = 0"),
         "32: statistics.births_by_district_year.record_bound: expected a positive integer"),
        (('columns = ["children", "youngest_birth"]', 'columns = "children"'),
         "39: features.outreach.columns: expected a list, found a string"),
    ],
)  # fmt: skip
def test_wrong_types_are_refused(edit: tuple[str, str], expected: str) -> None:
    assert refusal(GOOD.replace(*edit)) == f"{FILE}:{expected}"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('name = "health"', 'name = "Health"'), "1: name: a name is lower-case"),
        (("[predicates.mother_of]", "[predicates.mother-of]"), "18: predicates.mother-of: a name"),
        (("[quality.duplicate_child]", '[quality."2x"]'), "27: quality.2x: a name"),
        (("min_children =", "MinChildren ="), f"{L_CHILDREN_PARAMS}: predicates.children_at_least"
         ".params.MinChildren: a name"),
    ],
)  # fmt: skip
def test_names_must_be_lower_case_identifiers(edit: tuple[str, str], expected: str) -> None:
    assert refusal(GOOD.replace(*edit)).startswith(f"{FILE}:{expected}")


def test_source_refusals() -> None:
    url = 'source = "sqlite:////srv/health/birth.db"'
    unset = GOOD.replace(url, 'source = "${HEALTH_DB_URL}"')
    assert refusal(unset, env={}) == (
        f"{FILE}:{L_SOURCE}: source: environment variable HEALTH_DB_URL is not set"
    )
    both = GOOD.replace(url, url + '\nsource_file = "/run/secrets/url"')
    assert refusal(both) == (
        f"{FILE}:{L_SOURCE}: source: give exactly one of source and source_file, not both"
    )
    neither = GOOD.replace(url, "")
    assert refusal(neither) == (
        f"{FILE}:1: source: give exactly one of source and source_file, not neither"
    )
    oracle = GOOD.replace(url, 'source = "oracle://reader:s3cret@db/health"')
    message = refusal(oracle)
    assert message.startswith(f"{FILE}:{L_SOURCE}: source: no read-only guard for this dialect")
    assert "s3cret" not in message
    garbage = GOOD.replace(url, 'source = "reader:s3cret at db"')
    assert "s3cret" not in refusal(garbage)
    memory = GOOD.replace(url, 'source = "sqlite://"')
    assert refusal(memory).endswith("source: an in-memory SQLite database holds no department data")


def test_mask_url_hides_only_the_password() -> None:
    assert (
        mask_url("mysql+pymysql://reader:s3cret@h:3306/db")
        == "mysql+pymysql://reader:***@h:3306/db"
    )
    assert mask_url("managed") == "managed"
    assert "s3cret" not in mask_url("not a url s3cret")


# --- statements --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "line", "what"),
    [
        (f"DELETE FROM CSYXZM WHERE XSESFZH = '{ID}'\n",
         L_CERT_SQL + 1, "expected one SELECT or WITH ... SELECT, found DELETE"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject;\nDELETE FROM CSYXZM\n",
         L_CERT_SQL + 2, "more than one statement: a ';' is allowed only at the end"),
        ("UPDATE CSYXZM SET ZT = '0' WHERE XSESFZH = :subject\n",
         L_CERT_SQL + 1, "expected one SELECT or WITH ... SELECT, found UPDATE"),
        ("WITH gone AS (\n  DELETE FROM CSYXZM WHERE XSESFZH = :subject RETURNING 1\n)\n"
         "SELECT COUNT(*) FROM gone\n",
         L_CERT_SQL + 2, "DELETE is not allowed: a query here is one read-only SELECT"),
        ("SELECT * INTO stolen FROM CSYXZM\n WHERE XSESFZH = :subject\n",
         L_CERT_SQL + 1, "INTO is not allowed: a query here is one read-only SELECT"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject FOR UPDATE\n",
         L_CERT_SQL + 2, "FOR UPDATE takes row locks; a predicate only reads"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject FOR SHARE\n",
         L_CERT_SQL + 2, "FOR SHARE takes row locks; a predicate only reads"),
        ("REPLACE INTO CSYXZM VALUES (:subject)\n",
         L_CERT_SQL + 1, "expected one SELECT or WITH ... SELECT, found REPLACE"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = :subject\n"
         " UNION SELECT set_config('a', 'b', false)\n",
         L_CERT_SQL + 2, "SET_CONFIG is not allowed: a query here is one read-only SELECT"),
        ("WITH x AS (SELECT 1)\nVALUES (:subject)\n",
         L_CERT_SQL + 1, "WITH must lead to a SELECT"),
        ("PRAGMA table_info(CSYXZM)\n",
         L_CERT_SQL + 1, "expected one SELECT or WITH ... SELECT, found PRAGMA"),
        # (\\\\ in TOML is one backslash)
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = :subject\n  AND ZT = 'it\\\\'s'\n",
         L_CERT_SQL + 2, "a backslash in a string reads differently on MySQL and PostgreSQL"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = :subject /*! OR 1 */\n",
         L_CERT_SQL + 1, "an executable comment (/*! ... */) is refused"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject --x\n",
         L_CERT_SQL + 2, "'--' must be followed by a space (MySQL reads --x as minus minus x)"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject::text\n",
         L_CERT_SQL + 2, ":subject:: is not bound; write CAST(:subject AS ...)"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = 'open\n",
         L_CERT_SQL + 1, "a string is not closed"),
        ("\n", L_CERT_SQL + 1, "expected a SELECT, found no statement"),
    ],
)  # fmt: skip
def test_statements_that_are_not_one_read_only_select_are_refused(
    sql: str, line: int, what: str
) -> None:
    assert refusal(replace_sql(sql)) == (
        f"{FILE}:{line}: predicates.birth_certificate_issued.sql: {what}"
    )


def test_a_refused_single_line_statement_points_at_its_key() -> None:
    one_line = GOOD.replace(
        'sql = "SELECT COUNT(*) FROM CSYXZM WHERE MQSFZH = :subject AND XSESFZH = :related"',
        'sql = "SELECT COUNT(*) FROM CSYXZM WHERE MQSFZH = :subject; DROP TABLE CSYXZM"',
    )
    assert refusal(one_line) == (
        f"{FILE}:20: predicates.mother_of.sql: more than one statement: a ';' is allowed only at"
        " the end"
    )


def test_a_literal_id_number_never_reaches_the_message() -> None:
    message = refusal(replace_sql(f"DELETE FROM CSYXZM WHERE XSESFZH = '{ID}'\n"))
    assert ID not in message and ID[:6] + "*" * 8 not in message
    bad_name = GOOD.replace("[predicates.mother_of]", f'[predicates."P{ID}"]')
    message = refusal(bad_name)
    assert ID not in message and "110105********1234" in message


# --- bind parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "line", "what"),
    [
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject AND ZT = :status\n",
         L_CERT_SQL + 2,
         ":status is not a parameter here (this query can use :subject, :subject15, :today,"
         " :today_yyyymmdd)"),
        ("SELECT COUNT(*) FROM CSYXZM\n WHERE XSESFZH = :subject AND MQSFZH = :related\n",
         L_CERT_SQL + 2, ":related needs related = true"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = :subject\n"
         " HAVING COUNT(*) <= :record_bound\n",
         L_CERT_SQL + 2, ":record_bound is bound only in statistics"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE XSESFZH = :Subject\n",
         L_CERT_SQL + 1, ":Subject is not a parameter here (this query can use :subject,"
         " :subject15, :today, :today_yyyymmdd)"),
        ("SELECT COUNT(*) FROM CSYXZM WHERE ZT = '1'\n",
         L_CERT_SQL, "never binds :subject or :subject15"),
    ],
)  # fmt: skip
def test_bind_parameters_must_be_available(sql: str, line: int, what: str) -> None:
    assert refusal(replace_sql(sql)) == (
        f"{FILE}:{line}: predicates.birth_certificate_issued.sql: {what}"
    )


def test_declared_parameters_and_related_predicates_must_be_used() -> None:
    unused = GOOD.replace("CAST(:min_children AS INTEGER)", "2")
    assert refusal(unused) == (
        f"{FILE}:{L_CHILDREN_PARAMS}: predicates.children_at_least.params.min_children: declared"
        " but not used in sql"
    )
    no_related = GOOD.replace("AND XSESFZH = :related", "")
    assert refusal(no_related) == (
        f"{FILE}:20: predicates.mother_of.sql: related = true but never binds :related or"
        " :related15"
    )
    reserved = GOOD.replace("min_children", "today")
    assert refusal(reserved).startswith(
        f"{FILE}:{L_CHILDREN_PARAMS}: predicates.children_at_least.params.today: this name is a"
        " bind parameter the adapter supplies"
    )


def test_quality_checks_and_statistics_have_their_own_parameters() -> None:
    with_subject = GOOD.replace("WHERE CSRQ < '19000101'", "WHERE MQSFZH = :subject")
    assert refusal(with_subject) == (
        f"{FILE}:24: quality.mother_under_14.sql: :subject is not a parameter here (this query"
        " can use :today, :today_yyyymmdd)"
    )
    stat_subject = GOOD.replace(
        "WHERE SUBSTR(CSRQ, 1, 4) = :year", "WHERE XZQH = :subject AND :year = ''"
    )
    assert refusal(stat_subject) == (
        f"{FILE}:35: statistics.births_by_district_year.sql: :subject is not a parameter here"
        " (this query can use :record_bound, :today, :today_yyyymmdd, :year)"
    )


def test_a_quality_check_must_name_known_predicates() -> None:
    unknown = GOOD.replace(
        'predicates = ["children_at_least"]', 'predicates = ["children_at_most"]'
    )
    assert refusal(unknown) == (
        f"{FILE}:25: quality.mother_under_14.predicates: no predicate children_at_most in this file"
    )
    empty = GOOD.replace('predicates = ["children_at_least"]', "predicates = []")
    assert refusal(empty).endswith("expected a non-empty list of predicate names")


def test_the_example_in_the_docs_is_the_format_loaded_here() -> None:
    """docs/departments.md's example, with its elided SQL filled in, loads."""
    doc = (Path(__file__).parent.parent / "docs" / "departments.md").read_text(encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    assert example.count('sql = "..."') == 1
    example = (
        example.replace(
            'sql = "..."',
            'sql = "SELECT COUNT(*) >= :min_children AND MIN(CSRQ) > :youngest_under_years'
            ' FROM CSYXZM WHERE MQSFZH IN (:subject, :subject15)"',
        )
        .replace("WHERE ...", "WHERE CSRQ < '19000101'")
        .replace(", ... FROM", " FROM")
    )
    dept = load(example)
    assert dept.source_kind == "mysql"
    assert set(dept.predicates) == {"birth_certificate_issued", "children_at_least_youngest_under"}
    assert dept.quality["mother_under_14"].predicates == ("children_at_least_youngest_under",)
    assert dept.statistics["births_by_district_year"].record_bound == 1


def test_key_line_places_keys_as_refusals_do() -> None:
    assert key_line(GOOD, ("predicates", "children_at_least", "params")) == L_CHILDREN_PARAMS
    assert key_line(GOOD, ("predicates", "birth_certificate_issued", "sql")) == L_CERT_SQL
    # A key inside an inline table, or one that is not there: its table's line.
    assert key_line(GOOD, ("predicates", "children_at_least", "params", "min_children")) == 15
    assert key_line(GOOD, ("predicates", "birth_certificate_issued", "related")) == L_CERT_HEADER
    assert key_line(GOOD, ("nowhere",)) == 1
