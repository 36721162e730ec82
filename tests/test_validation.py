"""Ingest validation finds exactly the injected errors, quarantines them, indexes who they
name, and reports them without ever showing a full ID number."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.conftest import SMALL_POPULATION, SMALL_SEED, Generated
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.ingest import TableReport, ingest
from tongban.adapters.store import DepartmentStore, sqlite_url
from tongban.adapters.synthetic.population import build_population
from tongban.adapters.synthetic.records import DEPARTMENT_ORDER, department_batches
from tongban.primitives.idnumber import Reason, check_char, make_id, mask, validate
from tongban.primitives.wire import PredicateCall, Tri

AS_OF = dt.date(2026, 6, 30)
FULL_ID = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
LEGACY_ID = re.compile(r"[0-9]{15}")
MASKED = re.compile(r"^[0-9]{6}\*+[0-9X]{4}$")


def _open(generated: Generated, name: str) -> DepartmentStore:
    return DepartmentStore(DEPARTMENTS[name], generated.urls[name])


def _query(store: DepartmentStore, stmt: Any) -> list[Any]:
    with store.connect() as conn:
        return list(conn.execute(stmt).all())


def _sql_count(store: DepartmentStore, table: str) -> int:
    t = store.department.table(table)
    with store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t)).scalar_one())


# --- the generated population: reports equal what was injected --------------------------------


@pytest.mark.parametrize("name", DEPARTMENT_ORDER)
def test_report_errors_equal_injected(population, name):
    report = population.result.reports[name]

    assert report["errors"] == population.result.injected[name]
    assert sum(report["errors"].values()) > 0
    for table in report["tables"]:
        assert table["received"] - table["loaded"] == table["quarantined"]
        assert sum(table["errors"].values()) == table["quarantined"]


@pytest.mark.parametrize("name", DEPARTMENT_ORDER)
def test_quarantine_rows_match_report(population, name):
    report = population.result.reports[name]
    store = _open(population, name)
    q = store.department.table("quarantine")
    try:
        by_kind = dict(_query(store, select(q.c.kind, func.count()).group_by(q.c.kind)))
        by_table = dict(
            _query(store, select(q.c.table_name, func.count()).group_by(q.c.table_name))
        )
        for table in report["tables"]:
            assert _sql_count(store, table["table"]) == table["loaded"], table["table"]
            assert by_table.get(table["table"], 0) == table["quarantined"], table["table"]
    finally:
        store.dispose()

    assert by_kind == population.result.injected[name]


@pytest.fixture(scope="module")
def injected_ids() -> dict[str, dict[str, list[str]]]:
    """The (corrupted, as stored) ID numbers in each department's injected bad rows,
    recomputed from the model independently of the stores."""
    model = build_population(SMALL_POPULATION, SMALL_SEED)
    out = {}
    for name in DEPARTMENT_ORDER:
        _, injected = department_batches(model, name, SMALL_SEED)
        out[name] = {t: sorted(ids.tolist()) for t, ids in injected.stored_ids.items()}
    return out


@pytest.mark.parametrize("name", DEPARTMENT_ORDER)
def test_quarantine_subjects_index_the_bad_rows(population, name, injected_ids):
    store = _open(population, name)
    qs = store.department.table("quarantine_subjects")
    q = store.department.table("quarantine")
    try:
        rows = _query(store, select(qs.c.table_name, qs.c.id_number))
        orphans = _query(
            store,
            select(qs.c.quarantine_id).where(qs.c.quarantine_id.not_in(select(q.c.id))),
        )
    finally:
        store.dispose()
    indexed: dict[str, list[str]] = {}
    for table, number in rows:
        indexed.setdefault(table, []).append(number)

    assert {t: sorted(v) for t, v in indexed.items()} == injected_ids[name]
    assert orphans == []


def test_store_count_counts_rows(population):
    store = _open(population, "medins")
    try:
        assert store.count("insured_periods") == _sql_count(store, "insured_periods")
        assert store.count("quarantine") == _sql_count(store, "quarantine")
    finally:
        store.dispose()


def _no_full_ids(text: str) -> None:
    assert FULL_ID.findall(text) == []
    assert LEGACY_ID.findall(text) == []


def test_reports_never_show_a_full_id(population):
    manifest = (population.dir / "generation.json").read_text(encoding="utf-8")
    reports = json.dumps(population.result.reports, ensure_ascii=False)

    _no_full_ids(manifest)
    _no_full_ids(reports)
    _no_full_ids(json.dumps(population.result.manifest(), ensure_ascii=False))
    # The examples are there, and masked.
    examples = [
        example
        for report in population.result.reports.values()
        for table in report["tables"]
        for shown in table["examples"].values()
        for example in shown
    ]
    assert examples
    assert all(MASKED.match(e) for e in examples), examples


def test_report_examples_are_masks_of_quarantined_ids(population, injected_ids):
    for name in DEPARTMENT_ORDER:
        for table in population.result.reports[name]["tables"]:
            ids = injected_ids[name].get(table["table"], [])
            masks = {mask(number) for number in ids}
            for kind, shown in table["examples"].items():
                assert 1 <= len(shown) <= 3, (name, kind)
                assert set(shown) <= masks, (name, kind)


# --- a hand-built batch: one record per error kind --------------------------------------------

MOTHER = make_id("150102", dt.date(1990, 3, 15), 2)
FATHER = make_id("150102", dt.date(1988, 7, 1), 1)
YOUNG_MOTHER = make_id("150105", dt.date(2012, 1, 1), 4)


def _child(born: dt.date, sequence: int) -> str:
    return make_id("150102", born, sequence)


def _rotate_check(number: str) -> str:
    return number[:17] + "123456789X0"["0123456789X".index(number[17])]


def _with_check(body: str) -> str:
    return body + check_char(body)


GOOD = _child(dt.date(2020, 5, 5), 1)
GOOD_NO_FATHER = _child(dt.date(2021, 8, 9), 2)
LATE_CERT = _child(dt.date(2020, 5, 5), 3)
FUTURE = _child(dt.date(2026, 6, 1), 5)
UNDERAGE_MOTHER_CHILD = _child(dt.date(2024, 6, 1), 7)

# (kind, child_id, mother_id, father_id, birth_date, certificate_issued)
BIRTHS: list[tuple[str, str, str, str, str, str]] = [
    ("", GOOD, MOTHER, FATHER, "2020-05-05", "2020-05-10"),
    ("", GOOD_NO_FATHER, MOTHER, "", "2021-08-09", "NaT"),
    ("bad_check_digit", _rotate_check(_child(dt.date(2019, 1, 2), 9)), MOTHER, FATHER,
     "2019-01-02", "2019-01-03"),
    ("bad_date", _with_check("150102" + "20191302" + "011"), MOTHER, FATHER,
     "2019-01-02", "2019-01-03"),
    ("bad_length", "150102" + "190102" + "011", MOTHER, FATHER,
     "2019-01-02", "2019-01-03"),
    ("bad_format", "15010220190102A13X", MOTHER, FATHER, "2019-01-02", "2019-01-03"),
    ("bad_region", _with_check("990102" + "20190102" + "015"), MOTHER, FATHER,
     "2019-01-02", "2019-01-03"),
    ("mother_under_14", UNDERAGE_MOTHER_CHILD, YOUNG_MOTHER, "", "2024-06-01", "2024-06-02"),
    ("certificate_before_birth", LATE_CERT, MOTHER, FATHER, "2020-05-05", "2020-05-01"),
    ("future_date", FUTURE, MOTHER, FATHER, "2026-07-15", "NaT"),
]  # fmt: skip


def _births_batch(rows: list[tuple[str, str, str, str, str, str]], first_id: int = 1):
    n = len(rows)
    return {
        "id": np.arange(first_id, first_id + n, dtype=np.int64),
        "child_id": np.array([r[1] for r in rows], dtype="U18"),
        "mother_id": np.array([r[2] for r in rows], dtype="U18"),
        "father_id": np.array([r[3] for r in rows], dtype="U18"),
        "birth_date": np.array([r[4] for r in rows], dtype="datetime64[D]"),
        "birth_order": np.ones(n, dtype=np.int64),
        "certificate_no": np.array([f"A{first_id + i:09d}" for i in range(n)]),
        "certificate_issued": np.array([r[5] for r in rows], dtype="datetime64[D]"),
        "district": np.full(n, "150102"),
    }


def _fresh(tmp_path: Path, name: str) -> DepartmentStore:
    store = DepartmentStore(DEPARTMENTS[name], sqlite_url(str(tmp_path / f"{name}.db")))
    store.create_schema()
    store.set_meta("reference_date", AS_OF.isoformat())
    return store


@pytest.fixture
def health(tmp_path: Path):
    store = _fresh(tmp_path, "health")
    yield store
    store.dispose()


@pytest.fixture
def ingested(health: DepartmentStore) -> tuple[DepartmentStore, TableReport]:
    return health, ingest(health, "births", _births_batch(BIRTHS), AS_OF)


def test_hand_built_ids_have_the_intended_defects():
    expected = {
        "bad_check_digit": Reason.BAD_CHECK_DIGIT,
        "bad_date": Reason.BAD_DATE,
        "bad_length": Reason.BAD_LENGTH,
        "bad_format": Reason.BAD_FORMAT,
        "bad_region": Reason.BAD_REGION,
    }
    for kind, child, mother, father, *_ in BIRTHS:
        want = expected.get(kind, Reason.OK)
        assert validate(child, today=AS_OF) is want, kind
        assert validate(mother, today=AS_OF) is Reason.OK
        assert father == "" or validate(father, today=AS_OF) is Reason.OK


def test_each_kind_is_quarantined_once(ingested):
    store, report = ingested
    bad_kinds = [r[0] for r in BIRTHS if r[0]]

    assert report.received == len(BIRTHS)
    assert report.loaded == 2
    assert report.errors == Counter(bad_kinds)
    assert len(bad_kinds) == len(set(bad_kinds)) == 8
    q = store.department.table("quarantine")
    stored = _query(store, select(q.c.table_name, q.c.kind, q.c.record).order_by(q.c.id))
    assert [(t, k) for t, k, _ in stored] == [("births", k) for k in bad_kinds]
    for (kind, child, *_), (_, _, record) in zip([r for r in BIRTHS if r[0]], stored, strict=True):
        assert json.loads(record)["child_id"] == child, kind


def test_good_rows_are_loaded(ingested):
    store, _ = ingested
    b = store.department.table("births")

    rows = _query(
        store, select(b.c.child_id, b.c.mother_id, b.c.father_id, b.c.birth_date).order_by(b.c.id)
    )

    assert rows == [
        (GOOD, MOTHER, FATHER, dt.date(2020, 5, 5)),
        (GOOD_NO_FATHER, MOTHER, None, dt.date(2021, 8, 9)),  # empty nullable ID → NULL
    ]


def test_quarantine_subjects_index_every_id_in_bad_rows(ingested):
    store, _ = ingested
    q = store.department.table("quarantine")
    qs = store.department.table("quarantine_subjects")

    kinds = dict(_query(store, select(q.c.id, q.c.kind)))
    indexed: dict[str, set[str]] = {}
    for qid, table, number in _query(
        store, select(qs.c.quarantine_id, qs.c.table_name, qs.c.id_number)
    ):
        assert table == "births"
        indexed.setdefault(kinds[qid], set()).add(number)

    expected = {kind: {c, m, f} - {""} for kind, c, m, f, *_ in BIRTHS if kind}
    assert indexed == expected


def test_report_examples_are_masked(ingested):
    _, report = ingested
    doc = report.to_json()

    for kind, child, *_ in BIRTHS:
        if kind:
            assert doc["examples"][kind] == [mask(child)]
    _no_full_ids(json.dumps(doc))


def test_quarantined_subjects_answer_unknown(ingested):
    store, _ = ingested
    evaluator = Evaluator(store)

    def ask(subject: str) -> Tri:
        return evaluator.evaluate(PredicateCall("birth_certificate_issued", subject))

    assert evaluator.as_of() == AS_OF
    assert ask(GOOD) is Tri.TRUE
    assert ask(GOOD_NO_FATHER) is Tri.FALSE  # loaded, but no certificate yet
    assert ask(LATE_CERT) is Tri.UNKNOWN  # its only record is quarantined
    assert ask(FUTURE) is Tri.UNKNOWN
    assert ask(MOTHER) is Tri.UNKNOWN  # named in quarantined records
    assert ask(_child(dt.date(2018, 1, 1), 21)) is Tri.FALSE  # nobody knows them


def test_a_second_batch_appends_to_the_quarantine(ingested):
    store, _ = ingested
    again = [("bad_check_digit", _rotate_check(GOOD), MOTHER, FATHER, "2020-05-05", "NaT")]

    report = ingest(store, "births", _births_batch(again, first_id=100), AS_OF)

    assert report.errors == Counter({"bad_check_digit": 1})
    q = store.department.table("quarantine")
    ids = [r[0] for r in _query(store, select(q.c.id))]
    assert len(ids) == len(set(ids)) == 9


def test_an_invalid_id_is_reported_before_a_record_rule(health):
    # Bad mother ID *and* a future birth date: the ID rule, checked first, names the record.
    rows = [("", GOOD, _rotate_check(MOTHER), FATHER, "2026-07-15", "NaT")]

    report = ingest(health, "births", _births_batch(rows), AS_OF)

    assert report.errors == Counter({"bad_check_digit": 1})


def test_a_batch_missing_a_required_column_is_refused(health):
    batch = _births_batch(BIRTHS[:1])
    del batch["mother_id"]

    with pytest.raises(ValueError, match="mother_id"):
        ingest(health, "births", batch, AS_OF)


def test_an_empty_required_id_is_quarantined(health):
    rows = [("missing_id", "", MOTHER, FATHER, "2020-05-05", "2020-05-10")]

    report = ingest(health, "births", _births_batch(rows), AS_OF)

    assert report.loaded == 0
    assert report.errors == Counter({"missing_id": 1})


def _child_with_x(born: dt.date) -> str:
    for sequence in range(1, 999):
        number = _child(born, sequence)
        if number.endswith("X"):
            return number
    raise AssertionError("unreachable: one sequence in eleven ends in X")


def test_a_record_stored_with_lowercase_x_is_found(health):
    child = _child_with_x(dt.date(2020, 5, 5))
    rows = [("", child.lower(), MOTHER, FATHER, "2020-05-05", "2020-05-10")]
    report = ingest(health, "births", _births_batch(rows), AS_OF)
    assert report.loaded == 1

    answer = Evaluator(health).evaluate(PredicateCall("birth_certificate_issued", child))

    assert answer is Tri.TRUE


def test_a_quarantined_record_with_lowercase_x_makes_the_subject_unknown(health):
    mother = next(
        number
        for number in (make_id("150102", dt.date(1990, 3, 15), q) for q in range(4, 999, 2))
        if number.endswith("X")
    )
    rows = [("future_date", GOOD, mother.lower(), FATHER, "2026-07-15", "NaT")]
    report = ingest(health, "births", _births_batch(rows), AS_OF)
    assert report.errors == Counter({"future_date": 1})

    answer = Evaluator(health).evaluate(PredicateCall("birth_certificate_issued", mother))

    assert answer is Tri.UNKNOWN


# --- civil: the legal marriage age ---------------------------------------------------------


def _person(born: dt.date, male: bool, sequence: int = 10) -> str:
    return make_id("150102", born, sequence + 1 if male else sequence)


SINCE = dt.date(2021, 6, 1)
# (flagged, party_a, party_b)
MARRIAGES: list[tuple[bool, str, str]] = [
    # A man of 21 marrying a woman of 20: he is under age.
    (True, _person(dt.date(2000, 3, 1), True), _person(dt.date(2001, 5, 1), False)),
    # A woman of 20 (one day past her birthday) marrying a man of 26: fine.
    (False, _person(dt.date(1995, 1, 1), True), _person(dt.date(2001, 5, 31), False)),
    # A man on his 22nd birthday: fine.
    (False, _person(dt.date(1999, 6, 1), True), _person(dt.date(1999, 1, 1), False)),
    # A man one day short of 22: under age.
    (True, _person(dt.date(1999, 6, 2), True, 20), _person(dt.date(1999, 1, 1), False, 20)),
    # A woman one day short of 20: under age.
    (True, _person(dt.date(1990, 1, 1), True), _person(dt.date(2001, 6, 2), False)),
    # A woman on her 20th birthday, listed first: fine (sex is read from the ID, not order).
    (False, _person(dt.date(2001, 6, 1), False), _person(dt.date(1990, 1, 2), True)),
    # A man of 21 listed second: under age.
    (True, _person(dt.date(1990, 1, 3), False), _person(dt.date(2000, 1, 1), True, 30)),
]


def _marriage_batch() -> dict[str, np.ndarray]:
    n = len(MARRIAGES)
    return {
        "id": np.arange(1, n + 1, dtype=np.int64),
        "party_a": np.array([m[1] for m in MARRIAGES], dtype="U18"),
        "party_b": np.array([m[2] for m in MARRIAGES], dtype="U18"),
        "since": np.full(n, np.datetime64(SINCE, "D")),
        "until": np.full(n, np.datetime64("NaT", "D")),
        "district": np.full(n, "150102"),
    }


def test_under_legal_age_rule():
    check = next(c for c in DEPARTMENTS["civil"].checks if c.kind == "under_legal_age")

    flagged = check.fn(_marriage_batch(), AS_OF)

    assert flagged.tolist() == [m[0] for m in MARRIAGES]


def test_under_legal_age_marriages_are_quarantined(tmp_path):
    store = _fresh(tmp_path, "civil")
    try:
        report = ingest(store, "marriages", _marriage_batch(), AS_OF)
        evaluator = Evaluator(store)
        answers = [evaluator.evaluate(PredicateCall("currently_married", m[2])) for m in MARRIAGES]
    finally:
        store.dispose()

    flagged = sum(m[0] for m in MARRIAGES)
    assert report.errors == Counter({"under_legal_age": flagged})
    assert report.loaded == len(MARRIAGES) - flagged
    assert answers == [Tri.UNKNOWN if m[0] else Tri.TRUE for m in MARRIAGES]
