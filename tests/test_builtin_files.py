"""The built-in departments are department files (adapters/departments/*.toml), and the
``dates`` key those files use: derived date binds, checked at load, computed per answer."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.conftest import Generated
from tongban.adapters.builtin import BUILTIN_DIR, builtin_file, builtin_names
from tongban.adapters.departments import DEPARTMENTS, SEALED_TABLES
from tongban.adapters.deptfile import (
    DepartmentFileError,
    date_binds,
    load_department_file,
    parse_department_file,
)
from tongban.department_cli import check_file
from tongban.federation.statistics import REGISTRY
from tongban.primitives.regions import DISTRICTS, PROVINCES

# --- the registry --------------------------------------------------------------------


def test_every_builtin_department_is_its_file() -> None:
    assert set(builtin_names()) == set(DEPARTMENTS) == set(SEALED_TABLES)
    assert len(builtin_names()) == len(list(BUILTIN_DIR.glob("*.toml")))
    for name, dept in DEPARTMENTS.items():
        assert dept.file.path == builtin_file(name)
        assert dept.file.managed and dept.name == name
        # What the department answers is exactly what its file declares.
        assert dept.predicates is dept.file.predicates
        # Every predicate is covered by a quality check over the ingest quarantine.
        for predicate in dept.predicates:
            assert dept.file.checks_for(predicate), (name, predicate)


def test_the_file_and_the_generator_agree_on_enumerations() -> None:
    """The files enumerate districts, provinces and years; the generator and the
    statistics registry use the same values (a file lagging behind would refuse them)."""
    police = DEPARTMENTS["police"].predicates
    assert police["household_in_district"].params["district"] == tuple(DISTRICTS)
    assert police["household_in_province"].params["province"] == tuple(PROVINCES)
    for dept in DEPARTMENTS.values():
        for name, declared in dept.file.statistics.items():
            registered = REGISTRY.get(name)
            assert dept.name in registered.departments
            assert declared.params["year"] == registered.params[0].values
            assert declared.record_bound <= registered.record_bound


def test_every_statistic_a_builtin_department_contributes_is_in_its_file() -> None:
    for statistic in REGISTRY:
        for department in statistic.departments:
            assert statistic.name in DEPARTMENTS[department].file.statistics


def test_a_builtin_file_names_no_table_it_does_not_have() -> None:
    """Every identifier after FROM/JOIN in a built-in file is a table of its store."""
    for dept in DEPARTMENTS.values():
        statements = [p.sql for p in dept.predicates.values()]
        statements += [q.sql for q in dept.file.quality.values()]
        statements += [s.sql for s in dept.file.statistics.values()]
        for sql in statements:
            for table in re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", sql):
                assert table in dept.metadata.tables, (dept.name, table)


# --- dates ---------------------------------------------------------------------------

BASE = """\
name = "hrss"
title = "t"
source = "sqlite:////srv/hrss.db"

[predicates.paid]
{extra}
sql = "SELECT COUNT(*) FROM pay WHERE who = :subject AND paid > {bind}"
"""


def _load(extra: str, bind: str = ":since") -> object:
    return parse_department_file(BASE.format(extra=extra, bind=bind), "hrss.toml")


def _refusal(extra: str, bind: str = ":since") -> str:
    with pytest.raises(DepartmentFileError) as info:
        _load(extra, bind)
    return str(info.value)


def test_dates_are_computed_from_today_and_parameters() -> None:
    dept = parse_department_file(
        BASE.format(
            extra='params = { years = ["1", "3"], year = ["2024"] }\n'
            'dates = { since = "today - 365 days", cutoff = "today - years years",'
            ' start = "year", next = "year + 1 years", now = "today" }',
            bind=":since AND paid > :cutoff_yyyymmdd AND paid >= :start AND paid < :next"
            " AND paid <= :now",
        ),
        "hrss.toml",
    )
    dates = dept.predicates["paid"].dates
    leap = dt.date(2024, 2, 29)
    values = date_binds(dates, leap, {"years": "3", "year": "2024"})
    assert values["since"] == "2023-03-01"  # 365 days, not a calendar year
    assert values["since_yyyymmdd"] == "20230301"
    assert values["cutoff"] == "2021-02-28"  # 29 February falls back to the 28th
    assert values["cutoff_yyyymmdd"] == "20210228"
    assert values["start"] == "2024-01-01"
    assert values["next"] == "2025-01-01"
    assert values["now"] == "2024-02-29"


@pytest.mark.parametrize(
    ("extra", "bind", "expected"),
    [
        (
            'dates = { since = "yesterday" }',
            ":since",
            "hrss.toml:6: predicates.paid.dates.since: yesterday is neither today nor a"
            " parameter declared here",
        ),
        (
            'dates = { since = "today minus a year" }',
            ":since",
            'hrss.toml:6: predicates.paid.dates.since: expected "today" or a parameter, then'
            ' "+ N days" or "- N years"',
        ),
        (
            'params = { kind = ["a", "b"] }\ndates = { since = "kind" }',
            ":since AND :kind = 'a'",
            "hrss.toml:7: predicates.paid.dates.since: every value of kind must be a year"
            " (YYYY) or a date",
        ),
        (
            'params = { n = ["1", "many"] }\ndates = { since = "today - n days" }',
            ":since",
            "hrss.toml:7: predicates.paid.dates.since: every value of n must be a whole number",
        ),
        (
            'dates = { since = "today - 1 days", other = "today" }',
            ":since",
            "hrss.toml:6: predicates.paid.dates.other: declared but not used in sql",
        ),
        (
            'dates = { today = "today" }',
            ":today",
            "hrss.toml:6: predicates.paid.dates.today: this name is taken (a parameter, or one"
            " the adapter supplies)",
        ),
        (
            "dates = { since = 365 }",
            ":since",
            "hrss.toml:6: predicates.paid.dates.since: expected a string, found an integer",
        ),
        (
            "",
            ":since",
            "hrss.toml:7: predicates.paid.sql: :since is not a parameter here (this query can"
            " use :subject, :subject15, :today, :today_yyyymmdd)",
        ),
    ],
)
def test_bad_dates_are_refused_at_load(extra: str, bind: str, expected: str) -> None:
    assert _refusal(extra, bind) == expected


def test_a_parameter_used_only_in_dates_counts_as_used() -> None:
    dept = _load('params = { years = ["1", "2"] }\ndates = { since = "today - years years" }')
    assert dept.predicates["paid"].params == {"years": ("1", "2")}  # type: ignore[attr-defined]


def test_the_builtin_files_load_standalone() -> None:
    """A department's file is readable and loadable on its own (what a reviewer gets)."""
    for name in builtin_names():
        dept = load_department_file(builtin_file(name))
        assert dept.name == name and dept.source == "managed"


@pytest.mark.parametrize("name", builtin_names())
def test_tongban_department_check_passes_every_builtin_file(
    name: str, small_population: Generated
) -> None:
    """Each built-in file runs against a generated store: every predicate on the sample
    subject, every statistic explained, every quality check counted, none failing."""
    findings = check_file(builtin_file(name), data_dir=small_population.dir)
    failed = [f for f in findings if not f.ok]
    assert not failed, failed
    checks = {f.what for f in findings}
    assert {"keys", "connect", "run", "count"} <= checks
