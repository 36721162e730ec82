"""The claim catalog: the shipped claims, validation at load, parameters, Kleene combination."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tongban.adapters.departments import DEPARTMENTS
from tongban.gateway.catalog import Catalog, Claim, UnknownClaim, UnknownPurpose
from tongban.primitives.errors import PROBLEM_BASE, BadRequest, UnknownParameter
from tongban.primitives.regions import DISTRICTS
from tongban.primitives.wire import PredicateCall, Tri

SHIPPED_TEXT = resources.files("tongban.gateway").joinpath("claims.json").read_text("utf-8")
SHIPPED: dict[str, Any] = json.loads(SHIPPED_TEXT)

PURPOSES = {
    "birth_registered": {"school_enrollment", "maternity_allowance"},
    "household_in_district": {"school_enrollment"},
    "married": {"maternity_allowance"},
    "maternity_insurance_active": {"maternity_allowance", "insurance_claim"},
    "third_child_subsidy_eligible": {"childcare_subsidy"},
    "low_income_household": {"school_fee_waiver"},
}
DEPARTMENTS_OF = {
    "birth_registered": ("health", "police"),
    "household_in_district": ("police",),
    "married": ("civil",),
    "maternity_insurance_active": ("hrss",),
    "third_child_subsidy_eligible": ("health", "police", "hrss"),
    "low_income_household": ("civil",),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DEPARTMENTS)


def _load(tmp_path: Path, doc: dict[str, Any]) -> Catalog:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return Catalog.load(DEPARTMENTS, path)


# --- the shipped catalog ----------------------------------------------------------------


def test_shipped_catalog_has_exactly_the_six_claims(catalog: Catalog):
    assert set(catalog.claims) == set(PURPOSES)


@pytest.mark.parametrize("name", sorted(PURPOSES))
def test_shipped_claim_purposes_and_departments(catalog: Catalog, name: str):
    claim = catalog.claim(name)

    assert claim.purposes == PURPOSES[name]
    assert claim.departments == DEPARTMENTS_OF[name]
    assert all(catalog.purpose(p).name == p for p in claim.purposes)


def test_fertility_derived_claims(catalog: Catalog):
    derived = {name for name, c in catalog.claims.items() if c.fertility_derived}

    assert derived == {"birth_registered", "third_child_subsidy_eligible"}


def test_shipped_terms(catalog: Catalog):
    third = catalog.claim("third_child_subsidy_eligible")
    district = catalog.claim("household_in_district")

    assert [(t.department, t.predicate, t.expect) for t in third.terms] == [
        ("health", "children_at_least_youngest_under", True),
        ("police", "household_in_province", True),
        ("hrss", "childcare_subsidy_paid_within_year", False),
    ]
    assert dict(third.terms[0].params) == {"min_children": "3", "youngest_under_years": "3"}
    assert set(district.params["district"]) <= set(DISTRICTS)
    assert dict(district.terms[0].params) == {"district": "$district"}


def test_purposes_have_titles(catalog: Catalog):
    assert set(catalog.purposes) >= set().union(*PURPOSES.values())
    for purpose in catalog.purposes.values():
        assert purpose.title
        assert purpose.title_zh


def test_describe(catalog: Catalog):
    doc = catalog.claim("household_in_district").describe()

    assert doc["name"] == "household_in_district"
    assert doc["params"] == {
        "district": list(SHIPPED["claims"]["household_in_district"]["params"]["district"])
    }
    assert doc["purposes"] == ["school_enrollment"]
    assert doc["departments"] == ["police"]
    json.dumps(doc)  # plain JSON


def test_load_from_a_path_equals_the_shipped_catalog(tmp_path: Path, catalog: Catalog):
    loaded = _load(tmp_path, SHIPPED)

    assert loaded.claims == catalog.claims
    assert loaded.purposes == catalog.purposes


def test_term_binds_claim_parameters(catalog: Catalog):
    (term,) = catalog.claim("household_in_district").terms
    fixed = catalog.claim("third_child_subsidy_eligible").terms[1]

    assert term.call("S", {"district": "150102"}) == PredicateCall(
        "household_in_district", "S", {"district": "150102"}
    )
    assert fixed.call("S", {}) == PredicateCall("household_in_province", "S", {"province": "15"})


# --- validation at load -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "name"),
    [("claims", "married"), ("purposes", "school_enrollment")],
)
def test_declaring_twice_in_json_text_is_an_error(tmp_path: Path, section: str, name: str):
    duplicate = f'"{name}": {json.dumps(SHIPPED[section][name], ensure_ascii=False)},'
    text = SHIPPED_TEXT.replace(f'"{section}": {{', f'"{section}": {{ {duplicate}', 1)
    assert text != SHIPPED_TEXT
    path = tmp_path / "claims.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ValueError, match=f"'{name}' declared twice"):
        Catalog.load(DEPARTMENTS, path)


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a value at a dotted path (list indexes as numbers) in the catalog document."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


INVALID: dict[str, tuple[Mutation, str]] = {
    "unknown-department": (
        _set("claims.married.all_of.0.department", "education"),
        "unknown department education",
    ),
    "unknown-predicate": (
        _set("claims.married.all_of.0.predicate", "currently_divorced"),
        "civil has no predicate currently_divorced",
    ),
    "predicate-of-another-department": (
        _set("claims.birth_registered.all_of.0.predicate", "registered_in_household"),
        "health has no predicate registered_in_household",
    ),
    "undeclared-purpose": (
        _set("claims.married.purposes", ["maternity_allowance", "marketing"]),
        "undeclared purposes",
    ),
    "missing-predicate-params": (
        _set("claims.third_child_subsidy_eligible.all_of.0.params", {"min_children": "3"}),
        "needs parameters",
    ),
    "extra-predicate-params": (
        _set("claims.married.all_of.0.params", {"district": "150102"}),
        "needs parameters",
    ),
    "fixed-param-outside-enumeration": (
        _set("claims.third_child_subsidy_eligible.all_of.0.params.min_children", "4"),
        "outside its enumeration",
    ),
    "claim-param-outside-enumeration": (
        _set("claims.household_in_district.params.district", ["150102", "999999"]),
        "outside its enumeration",
    ),
    "undeclared-claim-param": (
        _set("claims.household_in_district.all_of.0.params.district", "$county"),
        "outside its enumeration",
    ),
    "no-terms": (_set("claims.married.all_of", []), "has no terms"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_catalog_fails_at_load(tmp_path: Path, case: str):
    mutate, message = INVALID[case]
    doc = copy.deepcopy(SHIPPED)
    mutate(doc)

    with pytest.raises(ValueError, match=message):
        _load(tmp_path, doc)
    with pytest.raises(ValueError, match=message):
        Catalog.from_json(doc, DEPARTMENTS)


def test_catalog_is_validated_against_the_given_departments():
    without_hrss = {k: v for k, v in DEPARTMENTS.items() if k != "hrss"}

    with pytest.raises(ValueError, match="unknown department hrss"):
        Catalog.load(without_hrss)


# --- claim parameters -------------------------------------------------------------------


def test_check_params_accepts_enumerated_values(catalog: Catalog):
    district = catalog.claim("household_in_district")
    married = catalog.claim("married")

    assert district.check_params({"district": "150102"}) == {"district": "150102"}
    assert married.check_params(None) == {}
    assert married.check_params({}) == {}


@pytest.mark.parametrize(
    ("claim", "params"),
    [
        ("married", {"district": "150102"}),  # unknown name
        ("household_in_district", {"district": "150102", "county": "x"}),  # unknown name
        ("household_in_district", {}),  # missing
        ("household_in_district", None),  # missing
        ("household_in_district", {"district": None}),  # missing
        ("household_in_district", {"district": 150102}),  # not a string
        ("household_in_district", {"district": ["150102"]}),  # not a string
        ("household_in_district", {"district": "999999"}),  # outside the enumeration
        ("household_in_district", {"district": " 150102"}),  # not normalised
    ],
)
def test_check_params_refuses_unknown_parameters(catalog: Catalog, claim: str, params: Any):
    with pytest.raises(UnknownParameter) as info:
        catalog.claim(claim).check_params(params)

    assert info.value.status == 400
    assert info.value.type == PROBLEM_BASE + "unknown-parameter"
    assert "999999" not in info.value.detail  # names the field, never echoes the value


@pytest.mark.parametrize("params", ["district=150102", ["district"], 150102, True])
def test_check_params_refuses_non_objects(catalog: Catalog, params: Any):
    with pytest.raises(BadRequest) as info:
        catalog.claim("household_in_district").check_params(params)

    assert type(info.value) is BadRequest
    assert info.value.type == PROBLEM_BASE + "bad-request"


# --- combining department answers -------------------------------------------------------

_KLEENE = {Tri.TRUE: 1.0, Tri.UNKNOWN: 0.5, Tri.FALSE: 0.0}


def _oracle(claim: Claim, results: tuple[Tri, ...]) -> Tri:
    """Kleene logic as numbers: AND is min, NOT is 1 - x, unknown is one half."""
    values = [
        _KLEENE[r] if t.expect else 1.0 - _KLEENE[r]
        for t, r in zip(claim.terms, results, strict=True)
    ]
    return {v: k for k, v in _KLEENE.items()}[min(values)]


@pytest.mark.parametrize("name", sorted(PURPOSES))
def test_combine_follows_kleene_logic(catalog: Catalog, name: str):
    claim = catalog.claim(name)

    for results in itertools.product(list(Tri), repeat=len(claim.terms)):
        assert claim.combine(list(results)) is _oracle(claim, results), results


def test_combine_with_a_negated_term(catalog: Catalog):
    third = catalog.claim("third_child_subsidy_eligible")
    t, f, u = Tri.TRUE, Tri.FALSE, Tri.UNKNOWN

    assert third.combine([t, t, f]) is t  # eligible, not yet paid
    assert third.combine([t, t, t]) is f  # already paid within the year
    assert third.combine([t, t, u]) is u  # payment office did not answer
    assert third.combine([f, u, u]) is f  # a definite no decides
    assert third.combine([u, t, f]) is u


def test_combine_needs_one_result_per_term(catalog: Catalog):
    with pytest.raises(ValueError):
        catalog.claim("birth_registered").combine([Tri.TRUE])


# --- unknown names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "", None, 3, ["married"], "Married"])
def test_unknown_claim(catalog: Catalog, name: Any):
    with pytest.raises(UnknownClaim) as info:
        catalog.claim(name)

    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400
    assert info.value.type.endswith("/unknown-claim")
    assert info.value.to_problem()["type"] == PROBLEM_BASE + "unknown-claim"


@pytest.mark.parametrize("name", ["marketing", "", None, {"purpose": "x"}])
def test_unknown_purpose(catalog: Catalog, name: Any):
    with pytest.raises(UnknownPurpose) as info:
        catalog.purpose(name)

    assert info.value.status == 400
    assert info.value.type.endswith("/unknown-purpose")


def test_declared_but_unused_purpose_is_known(catalog: Catalog):
    assert catalog.purpose("underwriting").title_zh == "保险核保"


def test_shipped_files_load_outside_the_source_tree(tmp_path: Path):
    """The installed package finds its own data (claims, policy, model, docs page) from any
    working directory: ``tongban gateway serve`` is not always started in the checkout,
    where the bare folder names ``gateway`` and ``policies`` happen to import too."""
    import subprocess
    import sys

    code = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('gateway') is None  # only tongban.gateway here\n"
        "from tongban.adapters.departments import DEPARTMENTS\n"
        "from tongban.gateway.catalog import Catalog\n"
        "from tongban.gateway.openapi import _static\n"
        "from tongban.policies import build_policy, default_legal_bases, default_rules\n"
        "build_policy(default_rules(), default_legal_bases(), Catalog.load(DEPARTMENTS))\n"
        "assert _static('docs.html')\n"
        "print('loaded')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "loaded\n"


# --- what a refusal tells the caller ----------------------------------------------------


def test_an_unknown_claim_points_to_the_list_of_claims(catalog: Catalog):
    with pytest.raises(UnknownClaim) as info:
        catalog.claim("11010519491231002X")  # a confused caller's ID number
    problem = info.value.to_problem()
    assert problem["detail"] == "claim: not in the catalog; GET /v1/claims lists the claims"
    assert problem["claims"] == "/v1/claims"
    assert "11010519491231002X" not in json.dumps(problem)


def test_an_unknown_purpose_lists_the_purposes(catalog: Catalog):
    with pytest.raises(UnknownPurpose) as info:
        catalog.purpose("13800138000")
    problem = info.value.to_problem()
    assert problem["allowed"] == sorted(catalog.purposes)
    assert "school_enrollment" in problem["detail"] and "/v1/claims" in problem["detail"]
    assert "13800138000" not in json.dumps(problem)


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"district": "11010519491231002X"}, "params.district: expected one of "),
        ({}, "params.district: required by household_in_district, one of "),
        ({"district": None}, "params.district: required by household_in_district, one of "),
    ],
)
def test_an_enumerated_parameter_error_names_the_parameter_and_its_values(
    catalog: Catalog, params: dict[str, Any], detail: str
):
    with pytest.raises(UnknownParameter) as info:
        catalog.claim("household_in_district").check_params(params)
    problem = info.value.to_problem()
    districts = list(catalog.claim("household_in_district").params["district"])
    assert sorted(districts) == sorted(DISTRICTS)
    assert problem["parameter"] == "district"
    assert problem["allowed"] == districts  # in the catalog's order
    assert problem["detail"] == detail + ", ".join(districts)
    assert "11010519491231002X" not in json.dumps(problem)


def test_an_unexpected_parameter_is_not_repeated(catalog: Catalog):
    with pytest.raises(UnknownParameter) as info:
        catalog.claim("household_in_district").check_params({"11010519491231002X": "1"})
    assert info.value.detail == "params: household_in_district takes only district"
    with pytest.raises(UnknownParameter) as info:
        catalog.claim("married").check_params({"x": "1"})
    assert info.value.detail == "params: married takes no parameters"


def test_long_enumerations_are_abbreviated_in_detail_and_complete_in_allowed():
    from tongban.federation.statistics import REGISTRY, UnknownStatistic

    statistic = REGISTRY.get("births_by_district_year")
    years = list(next(p for p in statistic.params if p.name == "year").values)
    assert len(years) > 12
    with pytest.raises(UnknownParameter) as info:
        statistic.check_params({"year": "1066"})
    problem = info.value.to_problem()
    assert problem["allowed"] == years and problem["parameter"] == "year"
    assert problem["detail"] == (
        f"params.year: expected one of {years[0]}, {years[1]}, {years[2]}, ..., {years[-1]} "
        f"({len(years)} values, in allowed)"
    )
    with pytest.raises(UnknownStatistic) as stat:
        REGISTRY.get("income_by_name")
    assert stat.value.to_problem()["statistics"] == "/v1/statistics"
    assert "income_by_name" not in stat.value.detail


def test_a_predicate_parameter_error_lists_the_values_too():
    predicate = DEPARTMENTS["health"].predicate("children_at_least_youngest_under")
    with pytest.raises(UnknownParameter) as info:
        predicate.check_params({"min_children": "9", "youngest_under_years": "3"})
    problem = info.value.to_problem()
    assert problem["parameter"] == "min_children"
    assert problem["allowed"] == ["2", "3"]
    assert problem["detail"] == "params.min_children: expected one of 2, 3"
