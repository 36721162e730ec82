"""The synthetic generator: deterministic per (size, seed), coherent as a population, and
its truth aggregates agree with SQL over the stores it loaded."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from sqlalchemy import extract, func, select

from tests.conftest import SMALL_POPULATION, SMALL_SEED, Generated
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.departments.police import RELATIONS
from tongban.adapters.store import DepartmentStore
from tongban.adapters.synthetic.generate import GenerationResult, generate
from tongban.adapters.synthetic.population import (
    OTHER_BIRTH_REGIONS,
    REFERENCE_DATE,
    Population,
    build_population,
)
from tongban.adapters.synthetic.records import DEPARTMENT_ORDER
from tongban.primitives.idnumber import Reason, validate_many
from tongban.primitives.regions import DISTRICTS

DETERMINISM_SIZE = 1500


def _quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def _generate(out: Path, seed: int, workers: int) -> GenerationResult:
    return generate(
        out,
        DETERMINISM_SIZE,
        seed,
        truth=out / "truth.jsonl",
        workers=workers,
        console=_quiet(),
    )


def _dump(db: Path) -> dict[str, str]:
    """A digest of every table's full contents, rows in a canonical order."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        digests = {}
        for table in tables:
            n = len(conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description)
            order = ", ".join(str(i) for i in range(1, n + 1))
            rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()
            h = hashlib.sha256()
            for row in rows:
                h.update(repr(row).encode())
            digests[table] = f"{len(rows)}:{h.hexdigest()}"
        return digests
    finally:
        conn.close()


def _dumps(result: GenerationResult) -> dict[str, dict[str, str]]:
    return {name: _dump(result.out_dir / "departments" / f"{name}.db") for name in DEPARTMENT_ORDER}


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerationResult, GenerationResult]:
    one = _generate(tmp_path_factory.mktemp("gen-a"), 5, workers=1)
    two = _generate(tmp_path_factory.mktemp("gen-b"), 5, workers=2)
    return one, two


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_stores(twice):
    one, two = twice

    a, b = _dumps(one), _dumps(two)

    assert a == b
    # Every department store has data, not just empty tables that trivially agree.
    for name, tables in a.items():
        assert any(not digest.startswith("0:") for digest in tables.values()), name


def test_same_seed_gives_identical_truth(twice):
    one, two = twice

    a = (one.out_dir / "truth.jsonl").read_bytes()
    b = (two.out_dir / "truth.jsonl").read_bytes()

    assert a == b
    assert a.count(b'"id_number"') == DETERMINISM_SIZE


def test_same_seed_gives_identical_reports(twice):
    one, two = twice

    assert one.injected == two.injected
    assert one.reports == two.reports


def test_different_seed_differs(twice, tmp_path):
    one, _ = twice

    other = _generate(tmp_path, 6, workers=1)

    assert (one.out_dir / "truth.jsonl").read_bytes() != (tmp_path / "truth.jsonl").read_bytes()
    a, b = _dumps(one), _dumps(other)
    for name in DEPARTMENT_ORDER:
        data_a = {t: d for t, d in a[name].items() if t != "meta"}
        data_b = {t: d for t, d in b[name].items() if t != "meta"}
        assert data_a != data_b, name


def test_model_is_deterministic():
    a = build_population(800, 3)
    b = build_population(800, 3)
    c = build_population(800, 4)

    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, other, equal_nan=value.dtype.kind == "M"), name
        else:
            assert value == other, name
    assert not np.array_equal(a.id_number, c.id_number)


def test_model_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="at least 10"):
        build_population(9, 1)


# --- the model's coherence -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Population:
    """The same model the session's ``small_population`` was generated from."""
    return build_population(SMALL_POPULATION, SMALL_SEED)


def ymd(days: Any) -> np.ndarray:
    """datetime64[D] → YYYYMMDD integers, for calendar comparisons (birthdays)."""
    d = np.asarray(days, dtype="datetime64[D]")
    y = d.astype("datetime64[Y]").astype(np.int64) + 1970
    m = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (d - d.astype("datetime64[M]")).astype(np.int64) + 1
    return np.asarray(y * 10000 + m * 100 + day)


def test_model_size_and_reference(model):
    assert model.size == SMALL_POPULATION
    assert model.reference == np.datetime64(REFERENCE_DATE, "D")
    for name, value in vars(model).items():
        if isinstance(value, np.ndarray) and name in {"male", "birth", "district", "relation"}:
            assert len(value) == SMALL_POPULATION, name


def test_ids_are_valid_unique_and_encode_the_person(model):
    ids = model.id_number

    assert set(validate_many(ids, today=REFERENCE_DATE).tolist()) == {Reason.OK}
    assert len(np.unique(ids)) == model.size
    assert np.array_equal(ymd(model.birth), np.array([int(s[6:14]) for s in ids.tolist()]))
    odd = np.array([int(s[14:17]) % 2 == 1 for s in ids.tolist()])
    assert np.array_equal(odd, model.male)
    # Children are born where their family lives; adults sometimes elsewhere.
    regions = np.array([s[:6] for s in ids.tolist()])
    assert np.array_equal(regions[model.child], model.district[model.child])
    adults = np.setdiff1d(np.arange(model.size), model.child)
    assert set(regions[adults].tolist()) <= set(DISTRICTS) | set(OTHER_BIRTH_REGIONS)


def test_everyone_is_born_between_1900_and_the_reference_date(model):
    assert model.birth.min() >= np.datetime64("1900-01-01")
    assert model.birth.max() <= model.reference


def test_couples_are_a_man_and_a_woman_of_legal_age(model):
    assert model.male[model.husband].all()
    assert not model.male[model.wife].any()
    assert len(np.intersect1d(model.husband, model.wife)) == 0
    assert len(np.unique(model.husband)) == len(model.husband)
    assert len(np.unique(model.wife)) == len(model.wife)
    # Civil Code art. 1047: men 22, women 20, on the calendar birthday.
    married = ymd(model.married)
    assert (married >= ymd(model.birth[model.husband]) + 22_0000).all()
    assert (married >= ymd(model.birth[model.wife]) + 20_0000).all()
    assert (model.married <= model.reference).all()


def test_divorces_follow_marriages(model):
    divorced = ~np.isnat(model.divorced)

    assert divorced.any()
    assert (model.divorced[divorced] > model.married[divorced]).all()
    assert (model.divorced[divorced] <= model.reference).all()


def test_children_are_born_within_the_marriage_and_fertile_years(model):
    couple_of_wife = {w: i for i, w in enumerate(model.wife.tolist())}
    couple = np.array([couple_of_wife[m] for m in model.mother.tolist()])
    born = model.birth[model.child]

    assert np.array_equal(model.father, model.husband[couple])
    assert (born > model.married[couple]).all()
    assert (born <= model.reference).all()
    # Before the mother's 45th birthday (the model's fertility cut-off, 16436 days).
    assert (born <= model.birth[model.mother] + np.timedelta64(16436, "D")).all()
    assert (ymd(born) < ymd(model.birth[model.mother]) + 45_0001).all()
    divorced = ~np.isnat(model.divorced[couple])
    assert (born[divorced] <= model.divorced[couple][divorced]).all()
    # And so never to a mother under 14, which ingest would quarantine.
    assert (ymd(born) >= ymd(model.birth[model.mother]) + 14_0000).all()


def test_birth_order_is_one_to_k_per_mother_in_time(model):
    born = model.birth[model.child]
    orders: dict[int, list[tuple[int, np.datetime64]]] = {}
    for mother, order, day in zip(
        model.mother.tolist(), model.birth_order.tolist(), born, strict=True
    ):
        orders.setdefault(mother, []).append((order, day))

    assert orders
    for rows in orders.values():
        rows.sort()
        assert [o for o, _ in rows] == list(range(1, len(rows) + 1))
        days = [d for _, d in rows]
        assert days == sorted(days)  # later children are never older (twins share a day)
    assert max(len(r) for r in orders.values()) >= 3


def test_households_are_coherent(model):
    assert set(model.district.tolist()) <= set(DISTRICTS)
    assert set(model.couple_district.tolist()) <= set(DISTRICTS)
    assert set(model.birth_district.tolist()) <= set(DISTRICTS)
    assert np.array_equal(model.district[model.husband], model.couple_district)
    assert np.array_equal(model.district[model.wife], model.couple_district)
    assert np.array_equal(model.district[model.child], model.birth_district)
    assert set(model.relation.tolist()) <= set(RELATIONS)
    # Every household has exactly one head.
    heads = Counter(model.household_no[model.relation == "head"].tolist())
    assert set(heads.values()) == {1}
    assert set(model.household_no.tolist()) == set(heads)
    # A child lives with a parent; households never span districts.
    parent_households = set(
        zip(model.household_no[model.mother].tolist(), model.child.tolist(), strict=True)
    ) | set(zip(model.household_no[model.father].tolist(), model.child.tolist(), strict=True))
    for child, household in zip(
        model.child.tolist(), model.household_no[model.child].tolist(), strict=True
    ):
        assert (household, child) in parent_households
    assert all(h[:6] == d for h, d in zip(model.household_no, model.district, strict=True))


def test_registration_dates(model):
    registered = ~np.isnat(model.registered_since)

    assert registered.mean() > 0.95
    assert (model.registered_since[registered] <= model.reference).all()
    assert (model.registered_since[registered] >= model.birth[registered]).all()
    # Only children can be unregistered.
    assert set(np.flatnonzero(~registered).tolist()) <= set(model.child.tolist())


def test_payments_follow_births(model):
    assert len(model.maternity_mother) > 0
    assert set(model.maternity_mother.tolist()) <= set(model.wife.tolist())
    assert (model.maternity_paid > model.maternity_birth).all()
    assert (model.maternity_paid <= model.reference).all()
    assert (model.maternity_amount > 0).all()
    pairs = list(zip(model.maternity_mother.tolist(), model.maternity_birth, strict=True))
    assert len(set(pairs)) == len(pairs)  # twins share one allowance
    births = set(zip(model.mother.tolist(), model.birth[model.child], strict=True))
    assert set(pairs) <= births
    # Childcare subsidies go to mothers, for one of their own children.
    own = set(zip(model.mother.tolist(), model.child.tolist(), strict=True))
    paid = zip(model.childcare_applicant.tolist(), model.childcare_child.tolist(), strict=True)
    assert set(paid) <= own
    assert (model.childcare_paid <= model.reference).all()


def test_low_income_allowance_members(model):
    assert len(model.allowance_no) > 0
    assert len(np.unique(model.allowance_no)) == len(model.allowance_no)
    members = set(zip(model.member_allowance.tolist(), model.member_person.tolist(), strict=True))
    for i, applicant in enumerate(model.allowance_applicant.tolist()):
        assert (i, applicant) in members  # the applicant is a member of their own household
    ended = ~np.isnat(model.allowance_end)
    assert (model.allowance_end[ended] > model.allowance_start[ended]).all()
    assert (model.allowance_start <= model.reference).all()


def test_truth_file_lists_the_model(small_population, model):
    subjects = small_population.subjects()

    assert [s["id_number"] for s in subjects] == model.id_number.tolist()
    assert [s["district"] for s in subjects] == model.district.tolist()


# --- truth aggregates against SQL over the loaded stores -------------------------------------


def _truth_cells(generated: Generated, name: str) -> dict[tuple[str, int], int]:
    cells: dict[tuple[str, int], int] = {}
    for cell in generated.cells():
        if cell["aggregate"] == name:
            key = (str(cell["district"]), int(str(cell["year"])))
            assert key not in cells
            cells[key] = int(str(cell["value"]))
    return cells


def _sql_cells(generated: Generated, department: str, table: str, date: str, value: Any):
    store = DepartmentStore(DEPARTMENTS[department], generated.urls[department])
    t = DEPARTMENTS[department].table(table)
    year = extract("year", t.c[date])
    stmt = select(t.c.district, year, value(t)).group_by(t.c.district, year)
    try:
        with store.connect() as conn:
            return {(str(d), int(y)): int(v) for d, y, v in conn.execute(stmt)}
    finally:
        store.dispose()


def test_births_by_district_year_matches_sql(population):
    truth = _truth_cells(population, "births_by_district_year")

    sql = _sql_cells(population, "health", "births", "birth_date", lambda t: func.count())

    assert truth
    assert sql == truth
    loaded = population.result.reports["health"]["tables"][0]["loaded"]
    assert sum(truth.values()) == loaded


def test_allowance_total_by_district_year_matches_sql(population):
    truth = _truth_cells(population, "allowance_total_by_district_year")

    sql = _sql_cells(
        population,
        "hrss",
        "maternity_allowance_payments",
        "paid_date",
        lambda t: func.sum(t.c.amount),
    )

    assert truth
    assert sql == truth


# --- the manifest --------------------------------------------------------------------------


def test_generation_manifest(population):
    path = population.dir / "generation.json"

    manifest = json.loads(path.read_text(encoding="utf-8"))

    assert manifest["population"] == SMALL_POPULATION
    assert manifest["seed"] == SMALL_SEED
    assert manifest["reference_date"] == REFERENCE_DATE.isoformat()
    assert list(manifest["departments"]) == list(DEPARTMENT_ORDER)
    for name, entry in manifest["departments"].items():
        injected = entry["injected_errors"]
        assert injected == population.result.injected[name]
        assert injected, f"{name}: no errors injected"
        assert all(count > 0 for count in injected.values())
        assert entry["validation"]["department"] == name
        assert "@" not in entry["url"]
    assert manifest["seconds"]["total"] >= 0


def test_generation_result_fields(population):
    result = population.result

    assert result.population == SMALL_POPULATION
    assert result.seed == SMALL_SEED
    assert result.reference_date == dt.date(2026, 6, 30)
    assert set(result.urls) == set(DEPARTMENT_ORDER)
    assert set(result.reports) == set(DEPARTMENT_ORDER)
