"""Distributed discrete Laplace noise, the packing offsets it needs, the ε ledger, and job
objects in the policy."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine

from tests.conftest import reset_chain
from tongban.adapters.departments import DEPARTMENTS
from tongban.federation.dp import TAIL, DiscreteLaplace, InvalidEpsilon, parse_epsilon
from tongban.federation.statistics import REGISTRY, Release
from tongban.gateway.catalog import Catalog
from tongban.gateway.jobs import declared_jobs
from tongban.gateway.statistics_store import BudgetExhausted, StatisticsStore
from tongban.policies import InvalidPolicy, Rule
from tongban.policies.rules import check_rule


@pytest.mark.parametrize("parties", [1, 3, 12])
def test_shares_sum_to_one_discrete_laplace(parties: int):
    """k shares of NB(1/k) differences add up to the two-sided geometric: check its
    variance 2alpha/(1-alpha)², its mass at zero (1-alpha)/(1+alpha) and its symmetry."""
    mech = DiscreteLaplace(epsilon=0.5, sensitivity=1, parties=parties)
    rng = np.random.Generator(np.random.PCG64(7))
    n = 200_000
    total = np.sum([mech.share(n, rng) for _ in range(parties)], axis=0)
    alpha = math.exp(-0.5)
    assert total.var() == pytest.approx(2 * alpha / (1 - alpha) ** 2, rel=0.03)
    assert (total == 0).mean() == pytest.approx((1 - alpha) / (1 + alpha), abs=0.005)
    assert abs(total.mean()) < 0.03
    one = mech.share(n, rng)
    if parties > 1:  # a single share is much narrower than the total: it cannot cancel it
        assert one.var() < total.var() / (parties - 0.5)


def test_shares_are_clipped_to_the_offset():
    mech = DiscreteLaplace(epsilon=10.0, sensitivity=1, parties=1)
    assert mech.offset == math.ceil(TAIL * 0.1)
    share = mech.share(100_000)
    assert share.min() >= -mech.offset and share.max() <= mech.offset
    assert mech.delta(10_000) < 1e-15


def test_fresh_randomness_per_call():
    mech = DiscreteLaplace(epsilon=0.1, sensitivity=1, parties=2)
    assert not np.array_equal(mech.share(64), mech.share(64))


@pytest.mark.parametrize("bad", [0, -1, 0.001, 10.5, float("nan"), float("inf"), "1", True, None])
def test_epsilon_is_validated(bad: object):
    with pytest.raises(InvalidEpsilon):
        parse_epsilon(bad)


def test_epsilon_split_and_layout_offsets():
    births = REGISTRY.get("births_by_district_year")
    allowance = REGISTRY.get("allowance_total_by_district_year")
    release = Release(10, 1.0)
    (only,) = births.noise(release, 12)
    assert (only.epsilon, only.sensitivity, only.parties) == (1.0, 1, 12)
    value, count = allowance.noise(release, 12)
    assert value.epsilon + count.epsilon == pytest.approx(1.0)
    assert value.sensitivity == allowance.record_bound and count.sensitivity == 1
    k = len(allowance.cells)
    assert allowance.offsets(release, 12) == [value.offset] * k + [count.offset] * k
    n = (1 << 2047) + 1
    plain, noisy = allowance.layout(n, 12), allowance.layout(n, 12, release)
    assert noisy.value_bound == plain.value_bound + 2 * value.offset
    assert births.offsets(Release(), 12) == [0] * births.counters


def test_suppression_is_the_departments_only_for_a_sole_contributor_without_noise():
    births = REGISTRY.get("births_by_district_year")
    assert births.suppressed_by_departments(Release(10, None))
    assert not births.suppressed_by_departments(Release(10, 0.5))


# --- the ε ledger ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatisticsStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:  # the scratch database is shared by the session: start from empty tables
        url = str(request.getfixturevalue("pg_scratch_url"))
        engine = create_engine(url)
        reset_chain(engine, "gateway")
        engine.dispose()
    store = StatisticsStore(url, budget=1.0, create=True)
    yield store
    store.engine.dispose()


def test_budget_is_spent_refunded_once_and_never_exceeded(ledger: StatisticsStore):
    store = ledger
    assert store.spend("a", "j1", 0.6) == pytest.approx(0.4)
    with pytest.raises(BudgetExhausted):
        store.spend("a", "j2", 0.5)
    assert store.spend("b", "j3", 1.0) == pytest.approx(0.0)  # budgets are per analyst
    store.refund("j1")
    store.refund("j1")  # at most once
    assert store.remaining("a") == pytest.approx(1.0)


def test_concurrent_jobs_cannot_overspend(ledger: StatisticsStore):
    store = ledger
    ok: list[str] = []
    refused: list[str] = []

    def job(i: int) -> None:
        try:
            store.spend("a", f"j{i}", 0.1)
            ok.append(f"j{i}")
        except BudgetExhausted:
            refused.append(f"j{i}")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 10 and len(refused) == 15
    assert store.remaining("a") == pytest.approx(0.0)


# --- job objects in the policy -----------------------------------------------------------


def test_job_objects_are_declared_from_the_registry():
    jobs = declared_jobs()
    assert {f"statistic:{s.name}" for s in REGISTRY} <= set(jobs)
    assert jobs["statistic:births_by_district_year"].departments == ("health",)
    assert {"federation:horizontal", "federation:vertical"} <= set(jobs)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("p, analyst, *, statistic:births_by_district_year, school_enrollment, allow", "one of"),
        ("p, analyst, hrss, statistic:births_by_district_year, official_statistics, allow",
         "department of the job"),
        ("p, analyst, *, statistic:nope, official_statistics, allow", "job object"),
        ("p, analyst, *, birth_registered, official_statistics, allow", "catalog purpose"),
    ],
)  # fmt: skip
def test_job_rules_are_validated(line: str, message: str):
    catalog = Catalog.load(DEPARTMENTS)
    with pytest.raises(InvalidPolicy, match=message):
        check_rule(Rule.parse(line), catalog, set())


def test_a_valid_job_rule_passes():
    catalog = Catalog.load(DEPARTMENTS)
    line = "p, analyst, health, statistic:births_by_district_year, official_statistics, allow"
    check_rule(Rule.parse(line), catalog, set())
