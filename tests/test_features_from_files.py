"""The training table read through the department files (health's, hrss's and civil's
``[features]`` queries over their managed stores) against the population model's own
derivation of it (``adapters.synthetic.features.reference_features``), on SQLite and
PostgreSQL stores.

What differs, and why:

- rows: the files leave out a mother a department holds a refused (quarantined) record
  about: a birth record (health names her), a maternity-insurance record under a 15-digit
  number (hrss names its 15-digit form) or her marriage (a corrupted check digit: civil has
  no marriage of her). Every other reference row is there, and no other row.
- ``father_employed``: a property of another person than the subject, which hrss cannot
  link to the mother (it holds no marriages or births), so no file computes it.
- ``maternity_allowance_under3`` (the reference's ``maternity_allowance_youngest``): hrss
  does not know which child is the youngest, so it counts an allowance for any child born
  in the eligibility window: 1 where the reference has 0 for a mother paid for an older
  child under 3 but not the youngest.

Everything else is equal up to the last bit of a division (PostgreSQL divides in NUMERIC):
ages are differences of day numbers computed in integer arithmetic on both dialects.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import SMALL_POPULATION, SMALL_SEED, Generated
from tongban.adapters.deptfile import DepartmentFileError, parse_department_file
from tongban.adapters.synthetic.features import ReferenceFeatures, reference_features
from tongban.adapters.synthetic.population import Population, build_population
from tongban.federation.features import (
    FeatureRows,
    FeatureTable,
    JoinedRows,
    SealedStore,
    SetSpec,
    load_training_table,
    read_training_rows,
    standardise,
)
from tongban.federation.horizontal.data import held_out_mask
from tongban.federation.horizontal.model import TrainConfig, auc, predict, train_centralized

from .federation_data import generated

RENAMED = {"maternity_allowance_under3": "maternity_allowance_youngest"}
NOT_IN_FILES = {"father_employed"}
LARGER = 20_000


@pytest.fixture(scope="module")
def small_model() -> Population:
    return build_population(SMALL_POPULATION, SMALL_SEED)


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory.mktemp("larger"), LARGER, 5)


def _quarantined(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id_number FROM quarantine_subjects WHERE table_name = :t"),
                {"t": table},
            )
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def _married_women(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT party_b FROM marriages"))}
    finally:
        engine.dispose()


def _fifteen(number: str) -> str:
    return number[:6] + number[8:17]


def _compare(files: JoinedRows, ref: ReferenceFeatures, pop: Population) -> dict[str, int]:
    """Assert the documented agreement; returns the allowance mismatches and row counts."""
    named = tuple(RENAMED.get(c, c) for c in files.columns)
    assert named == tuple(c for c in ref.columns if c not in NOT_IN_FILES)
    at = {s: i for i, s in enumerate(ref.id_number.tolist())}
    extra = [s for s in files.id_number.tolist() if s not in at]
    assert extra == []
    idx = np.array([at[s] for s in files.id_number.tolist()], dtype=np.int64)
    np.testing.assert_array_equal(files.label, ref.label[idx])
    np.testing.assert_array_equal(files.district, ref.district[idx])
    allowance = 0
    for i, name in enumerate(files.columns):
        mine, theirs = files.values[:, i], ref.column(RENAMED.get(name, name))[idx]
        if name != "maternity_allowance_under3":
            np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=0, err_msg=name)
            continue
        differ = mine != theirs
        allowance = int(differ.sum())
        # Only 1 where the reference has 0: paid for an older child in the window.
        assert (mine[differ] == 1).all() and (theirs[differ] == 0).all()
        older_paid = _paid_for_an_older_child_under_3(pop, files.id_number[differ])
        assert older_paid.all()
    return {"allowance": allowance, "rows": len(idx), "reference": ref.rows}


def _paid_for_an_older_child_under_3(pop: Population, mothers: np.ndarray) -> np.ndarray:
    ref_day = int(pop.reference.astype(np.int64))
    person = {s: i for i, s in enumerate(pop.id_number.tolist())}
    paid = pop.maternity_birth.view(np.int64)
    out = []
    for m in mothers.tolist():
        births = pop.birth[pop.child[pop.mother == person[m]]].view(np.int64)
        youngest = births.max()
        mine = paid[pop.maternity_mother == person[m]]
        out.append(
            bool(((mine > ref_day - 1095) & (mine < ref_day - 30) & (mine != youngest)).any())
        )
    return np.array(out, dtype=bool)


def _left_out(files: JoinedRows, ref: ReferenceFeatures, urls: dict[str, str]) -> set[str]:
    """Reference rows the files leave out that no quarantine explains (expected empty)."""
    health = _quarantined(urls["health"], "births")
    hrss = _quarantined(urls["hrss"], "social_insurance")
    married = _married_women(urls["civil"])
    kept = set(files.id_number.tolist())
    unexplained = set()
    for mother in ref.id_number.tolist():
        if mother in kept:
            continue
        if mother in health or _fifteen(mother) in hrss or mother not in married:
            continue
        unexplained.add(mother)
    return unexplained


def test_the_files_compute_the_reference_table(population: Generated, small_model: Population):
    """On SQLite and PostgreSQL stores of the same population: the same rows (but those
    quarantined records explain) and the same values (but the documented two columns)."""
    files = read_training_rows(population.dir, store_urls=population.urls)
    ref = reference_features(small_model)
    counts = _compare(files, ref, small_model)
    assert _left_out(files, ref, population.urls) == set()
    assert counts["rows"] >= 0.9 * counts["reference"]
    assert sum(files.dropped.values()) <= counts["reference"] - counts["rows"]


def test_sqlite_and_postgresql_stores_give_the_same_table(
    small_population: Generated, pg_population: Generated
):
    lite = read_training_rows(small_population.dir, store_urls=small_population.urls)
    pg = read_training_rows(pg_population.dir, store_urls=pg_population.urls)
    np.testing.assert_array_equal(lite.id_number, pg.id_number)
    np.testing.assert_allclose(lite.values, pg.values, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(lite.label, pg.label)
    np.testing.assert_array_equal(lite.district, pg.district)


def test_a_larger_population_agrees_and_trains_as_well(larger: Path):
    """20,000 people: the same comparison, and a centralised model on the file table scores
    within 0.02 AUC of one on the reference table (14 columns, no row left out)."""
    pop = build_population(LARGER, 5)
    ref = reference_features(pop)
    files = read_training_rows(larger)
    counts = _compare(files, ref, pop)
    urls = {
        d: f"sqlite:///{larger / 'departments' / f'{d}.db'}" for d in ("health", "hrss", "civil")
    }
    assert _left_out(files, ref, urls) == set()
    assert counts["allowance"] <= 0.02 * counts["rows"]
    assert counts["rows"] >= 0.95 * counts["reference"]

    mean, std = ref.values.mean(axis=0), ref.values.std(axis=0)
    reference = FeatureTable(
        ref.id_number, ref.district, ref.columns, ref.owners, (ref.values - mean) / std, ref.label
    )
    scores = {}
    for name, table in (("reference", reference), ("files", load_training_table(larger))):
        held = held_out_mask(table)
        params, _ = train_centralized(table.X[~held], table.label[~held], 10, TrainConfig())
        scores[name] = auc(predict(params, table.X[held]), table.label[held])
    assert scores["files"] > 0.65
    assert abs(scores["files"] - scores["reference"]) < 0.03, scores


def test_the_standardised_table_is_shuffled_by_seed_only(larger: Path):
    joined = read_training_rows(larger)
    a, b, c = standardise(joined, 1), standardise(joined, 1), standardise(joined, 2)
    np.testing.assert_array_equal(a.id_number, b.id_number)
    assert sorted(a.id_number.tolist()) == sorted(c.id_number.tolist())
    assert a.id_number.tolist() != c.id_number.tolist()
    np.testing.assert_allclose(a.X.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(a.X.std(axis=0), 1, atol=1e-9)


# --- the file format: dates on feature sets -----------------------------------------------

_FILE = '''
name = "health"
title = "Health"
source = "sqlite:////tmp/health.db"

[features.families]
columns = ["children"]
{dates}
sql = """
SELECT mother_id AS subject, COUNT(*) AS children FROM births
 WHERE {where} GROUP BY mother_id
"""
'''


def _parse(dates: str, where: str) -> object:
    return parse_department_file(
        textwrap.dedent(_FILE.format(dates=dates, where=where)), filename="health.toml"
    )


def test_feature_sets_bind_declared_dates():
    dept = _parse('dates = { under3 = "today - 1095 days" }', "birth_date > :under3")
    features = dept.features["families"]  # type: ignore[attr-defined]
    assert set(features.dates) == {"under3"} and "under3" in features.binds


@pytest.mark.parametrize(
    ("dates", "where", "why"),
    [
        ('dates = { under3 = "today - 1095 days" }', "1 = 1", "declared but not used in sql"),
        ("", "birth_date > :under3", ":under3 is not a parameter here"),
        ('dates = { under3 = "year - 1 years" }', "birth_date > :under3", "neither today"),
    ],
)
def test_feature_set_dates_are_checked_at_load(dates: str, where: str, why: str):
    with pytest.raises(DepartmentFileError, match=why):
        _parse(dates, where)


# --- the join -------------------------------------------------------------------------------


def test_the_join_keeps_health_rows_fills_hrss_and_leaves_out_the_unknown():
    from tongban.federation.features import TRAINING_SETS, join_feature_sets

    health, employment, marriage, label = TRAINING_SETS
    nan = float("nan")
    sets: dict[SetSpec, tuple[tuple[str, ...], FeatureRows]] = {
        health: (("age",), [("A", (30.0,)), ("B", (31.0,)), ("C", (32.0,)), ("D", (33.0,))]),
        # B has no hrss record (zeros); C is unknown to hrss (NULL): left out.
        employment: (("employed",), [("A", (1.0,)), ("C", (nan,)), ("Z", (1.0,))]),
        # D has no marriage: left out; Z is no family.
        marriage: (
            ("urban", "district"),
            [("A", (1.0, 150102.0)), ("B", (0.0, 150105.0)), ("C", (0.0, 150102.0))],
        ),
        label: (("childcare_subsidy_paid",), [("A", (1.0,))]),
    }
    joined = join_feature_sets(sets)
    assert joined.id_number.tolist() == ["A", "B"]
    assert joined.columns == ("age", "employed", "urban")
    assert joined.owners == ("health", "hrss", "civil")
    np.testing.assert_array_equal(joined.values, [[30.0, 1.0, 1.0], [31.0, 0.0, 0.0]])
    assert joined.district.tolist() == ["150102", "150105"]
    assert joined.label.tolist() == [0, 1]  # A was paid; B was not
    assert dict(joined.dropped) == {"unknown": 1, "duplicate": 0, "missing": 1}


def test_a_subject_twice_in_one_set_is_left_out():
    from tongban.federation.features import TRAINING_SETS, join_feature_sets

    health, employment, marriage, label = TRAINING_SETS
    sets: dict[SetSpec, tuple[tuple[str, ...], FeatureRows]] = {
        health: (("age",), [("A", (30.0,)), ("B", (31.0,))]),
        employment: (("employed",), [("A", (1.0,)), ("A", (0.0,))]),
        marriage: (("district",), [("A", (150102.0,)), ("B", (150102.0,))]),
        label: (("childcare_subsidy_paid",), []),
    }
    joined = join_feature_sets(sets)
    assert joined.id_number.tolist() == ["B"] and joined.dropped["duplicate"] == 1


def test_a_store_sealed_at_rest_is_refused(small_population: Generated, tmp_path: Path):
    """Blind-index tokens carry no birth date and do not join across departments."""
    import shutil

    (tmp_path / "departments").mkdir()
    for name in ("health", "hrss", "civil"):
        shutil.copy(small_population.dir / "departments" / f"{name}.db", tmp_path / "departments")
    engine = create_engine(f"sqlite:///{tmp_path / 'departments' / 'hrss.db'}")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('at_rest', '{}')"))
    engine.dispose()
    with pytest.raises(ValueError, match="hrss: the store is encrypted at rest"):
        load_training_table(tmp_path)


def test_the_table_built_before_sealing_stands_in_for_the_sealed_stores(
    small_population: Generated, tmp_path: Path
) -> None:
    """What `tongban demo` does: read the table through the files while the stores are
    plain, then seal them for real (tongban keys encrypt). Training then reads the table
    of the same generated data; a store of other data is refused."""
    import shutil

    from rich.console import Console

    from tongban.adapters.builtin import builtin_names
    from tongban.demo import encrypt_at_rest

    (tmp_path / "departments").mkdir()
    for name in builtin_names():
        shutil.copy(small_population.dir / "departments" / f"{name}.db", tmp_path / "departments")
    before = load_training_table(tmp_path)
    encrypt_at_rest(tmp_path, Console(file=io.StringIO()))
    after = load_training_table(tmp_path)
    assert after.rows == before.rows > 0
    assert np.array_equal(after.X, before.X) and np.array_equal(after.label, before.label)
    # Another generation's data under the same files: the cache does not stand in for it.
    engine = create_engine(f"sqlite:///{tmp_path / 'departments' / 'hrss.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '{\"seed\": 8}' WHERE key = 'generator'"))
    engine.dispose()
    with pytest.raises(SealedStore, match="encrypted at rest"):
        load_training_table(tmp_path)
