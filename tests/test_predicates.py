"""The adapters agree with the independent truth oracle, subject by subject, on SQLite and
on PostgreSQL; and the Evaluator refuses malformed calls without revealing anything."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.conftest import Generated
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.store import DepartmentStore
from tongban.gateway.catalog import Catalog, Claim
from tongban.primitives.errors import (
    BadRequest,
    InvalidIdNumber,
    UnknownParameter,
    UnknownPredicate,
)
from tongban.primitives.idnumber import make_id, mask
from tongban.primitives.regions import DISTRICTS
from tongban.primitives.wire import PredicateCall, Tri

REFERENCE = dt.date(2026, 6, 30)
WORDS: dict[Any, Tri] = {True: Tri.TRUE, False: Tri.FALSE, None: Tri.UNKNOWN}
CLAIMS = (
    "birth_registered",
    "household_in_district",
    "married",
    "maternity_insurance_active",
    "third_child_subsidy_eligible",
    "low_income_household",
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DEPARTMENTS)


@pytest.fixture(scope="module")
def evaluators(population: Generated) -> Iterator[dict[str, Evaluator]]:
    stores = {
        name: DepartmentStore(dept, population.urls[name]) for name, dept in DEPARTMENTS.items()
    }
    try:
        yield {name: Evaluator(store) for name, store in stores.items()}
    finally:
        for store in stores.values():
            store.dispose()


@pytest.fixture(scope="module")
def subjects(population: Generated) -> list[dict[str, Any]]:
    return population.subjects()


def _claim_params(claim: Claim, subject: Mapping[str, Any]) -> dict[str, str]:
    params = {"district": str(subject["district"])} if "district" in claim.params else {}
    return claim.check_params(params)


def _evaluate_all(
    claim: Claim, evaluators: dict[str, Evaluator], subjects: list[dict[str, Any]]
) -> list[Tri]:
    """Evaluate ``claim`` for every subject through the department evaluators. Term by term
    (one department's store at a time), then combined per subject."""
    numbers = [str(s["id_number"]) for s in subjects]
    params = [_claim_params(claim, s) for s in subjects]
    per_term = []
    for term in claim.terms:
        evaluator = evaluators[term.department]
        per_term.append(
            [evaluator.evaluate(term.call(n, p)) for n, p in zip(numbers, params, strict=True)]
        )
    return [claim.combine(list(results)) for results in zip(*per_term, strict=True)]


# --- agreement with the oracle -------------------------------------------------------------


def test_catalog_claims_are_the_truth_claims(catalog, subjects):
    assert set(catalog.claims) == set(CLAIMS)
    assert set(subjects[0]["claims"]) == set(CLAIMS)


def test_evaluators_use_the_data_set_reference_date(evaluators):
    for evaluator in evaluators.values():
        assert evaluator.as_of() == REFERENCE
        assert evaluator.store.get_meta("reference_date") == REFERENCE.isoformat()


@pytest.mark.slow
@pytest.mark.parametrize("name", CLAIMS)
def test_claim_matches_truth_for_every_subject(name, catalog, evaluators, subjects):
    claim = catalog.claim(name)

    got = _evaluate_all(claim, evaluators, subjects)

    expected = [WORDS[s["claims"][name]] for s in subjects]
    mismatches = [
        (mask(str(s["id_number"])), e.value, g.value)
        for s, e, g in zip(subjects, expected, got, strict=True)
        if e is not g
    ]
    assert len(got) == len(subjects) == 3000
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    tally = Counter(got)
    assert tally[Tri.TRUE] > 0, tally
    assert tally[Tri.FALSE] > 0, tally
    if name in {"birth_registered", "third_child_subsidy_eligible"}:
        assert tally[Tri.UNKNOWN] > 0, tally


def test_household_in_another_district_is_false(catalog, evaluators, subjects):
    """The oracle states the claim for the subject's own district; everyone is registered
    in at most one, so any other district is FALSE (or UNKNOWN where the record is
    quarantined)."""
    claim = catalog.claim("household_in_district")
    term = claim.terms[0]
    police = evaluators["police"]
    districts = sorted(DISTRICTS)
    checked: Counter[Tri] = Counter()
    for i, s in enumerate(subjects[::7]):
        own = str(s["district"])
        other = districts[(districts.index(own) + 1 + i % 7) % len(districts)]
        assert other != own
        expected = Tri.UNKNOWN if s["claims"]["household_in_district"] is None else Tri.FALSE

        got = claim.combine([police.evaluate(term.call(str(s["id_number"]), {"district": other}))])

        assert got is expected
        checked[got] += 1
    assert checked[Tri.FALSE] > 100


def test_subject_spelling_is_normalised(evaluators, subjects):
    """A lowercase check character or surrounding whitespace names the same person."""
    with_x = [s for s in subjects if str(s["id_number"]).endswith("X") and s["claims"]["married"]]
    assert with_x
    civil = evaluators["civil"]
    number = str(with_x[0]["id_number"])

    for spelling in (number, number.lower(), f" {number}\n"):
        assert civil.evaluate(PredicateCall("currently_married", spelling)) is Tri.TRUE


# --- refusals ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def someone(subjects) -> str:
    married = [s for s in subjects if s["claims"]["married"]]
    return str(married[0]["id_number"])


def test_unknown_predicate(evaluators, someone):
    with pytest.raises(UnknownPredicate) as info:
        evaluators["police"].evaluate(PredicateCall("no_such_predicate", someone))

    assert info.value.to_problem()["status"] == 400
    assert someone not in json.dumps(info.value.to_problem())


def test_a_predicate_of_another_department_is_unknown(evaluators, someone):
    with pytest.raises(UnknownPredicate):
        evaluators["police"].evaluate(PredicateCall("currently_married", someone))


@pytest.mark.parametrize(
    ("department", "predicate", "params"),
    [
        pytest.param("civil", "currently_married", {"district": "150102"}, id="unexpected"),
        pytest.param("police", "household_in_district", {}, id="missing"),
        pytest.param("police", "household_in_district", {"district": "999999"}, id="unlisted"),
        pytest.param(
            "police",
            "household_in_district",
            {"district": "150102", "extra": "1"},
            id="one-extra",
        ),
        pytest.param("police", "household_in_province", {"province": "99"}, id="province"),
        pytest.param(
            "health",
            "children_at_least_youngest_under",
            {"min_children": "4", "youngest_under_years": "3"},
            id="threshold-outside-enumeration",
        ),
        pytest.param(
            "health",
            "children_at_least_youngest_under",
            {"min_children": "3"},
            id="one-of-two-missing",
        ),
    ],
)
def test_bad_parameters(evaluators, someone, department, predicate, params):
    with pytest.raises(UnknownParameter) as info:
        evaluators[department].evaluate(PredicateCall(predicate, someone, params))

    problem = info.value.to_problem()
    assert problem["status"] == 400
    assert problem["type"].endswith("/unknown-parameter")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(
            lambda n: n[:17] + ("0" if n[17] != "0" else "1"), "bad_check_digit", id="check"
        ),
        pytest.param(lambda n: n[:6] + n[8:17], "bad_length", id="legacy-15"),
        pytest.param(lambda n: n[:10] + "13" + n[12:], "bad_date", id="month-13"),
        pytest.param(lambda n: "99" + n[2:], "bad_region", id="region"),
        pytest.param(lambda n: n[:14] + "ABC" + n[17], "bad_format", id="letters"),
        pytest.param(lambda n: "", "bad_length", id="empty"),
    ],
)
def test_malformed_subject(evaluators, someone, mutate, reason):
    bad = mutate(someone)

    with pytest.raises(InvalidIdNumber) as info:
        evaluators["civil"].evaluate(PredicateCall("currently_married", bad))

    problem = info.value.to_problem()
    assert problem["reason"] == reason
    assert problem["status"] == 422
    rendered = json.dumps(problem, ensure_ascii=False) + str(info.value)
    if bad:
        assert bad not in rendered
    assert someone not in rendered
    assert someone[:10] not in rendered


def test_the_call_is_checked_before_the_subject(evaluators):
    """A malformed request reveals nothing: predicate and parameters are refused first."""
    police = evaluators["police"]

    with pytest.raises(UnknownPredicate):
        police.evaluate(PredicateCall("no_such_predicate", "not-an-id"))
    with pytest.raises(UnknownParameter):
        police.evaluate(PredicateCall("household_in_district", "not-an-id", {"district": "x"}))


def test_a_subject_with_no_records_is_false_everywhere(evaluators, subjects):
    stranger = make_id("150102", dt.date(1985, 1, 1), 998)
    assert stranger not in {s["id_number"] for s in subjects}

    answers = {}
    for name, evaluator in evaluators.items():
        for predicate in evaluator.department.predicates.values():
            params = {k: v[0] for k, v in predicate.params.items()}
            # Two-person predicates (guardian_of) relate the stranger to another stranger.
            related = make_id("150102", dt.date(2020, 1, 1), 997) if predicate.related else None
            answers[(name, predicate.name)] = evaluator.evaluate(
                PredicateCall(predicate.name, stranger, params, related)
            )

    assert len(answers) == sum(len(d.predicates) for d in DEPARTMENTS.values())
    assert set(answers.values()) == {Tri.FALSE}


def test_malformed_wire_calls_are_bad_requests():
    with pytest.raises(BadRequest):
        PredicateCall.from_json({"predicate": "currently_married", "subject": 110105})
    with pytest.raises(BadRequest):
        PredicateCall.from_json({"predicate": "", "subject": "x"})
    with pytest.raises(BadRequest):
        PredicateCall.from_json({"predicate": "p", "subject": "x", "params": {"a": 1}})
    with pytest.raises(BadRequest):
        PredicateCall.from_json({"predicate": "p", "subject": "x", "extra": True})
    call = PredicateCall.from_json({"predicate": "p", "subject": "x", "params": {"a": "1"}})
    assert PredicateCall.from_json(call.to_json()) == call
