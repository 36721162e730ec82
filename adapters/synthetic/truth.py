"""Ground truth from the population model, written without touching the adapters.

Tests and benchmarks use it as an independent oracle: it re-derives every claim with NumPy
from the model and the list of injected errors, following the claim definitions in words
(three-valued: a person named in a quarantined record gets ``null``, i.e. undetermined).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ..columns import years_before
from .population import PROVINCE, Population
from .records import Injected

__all__ = ["CLAIMS", "aggregates", "claim_table", "truth_lines"]

CLAIMS = (
    "birth_registered",
    "household_in_district",
    "married",
    "maternity_insurance_active",
    "third_child_subsidy_eligible",
    "low_income_household",
)
Tri = npt.NDArray[np.int8]  # 1 true, 0 false, -1 unknown
_T, _F, _U = 1, 0, -1


def _tri(value: npt.NDArray[np.bool_], unknown: npt.NDArray[np.bool_]) -> Tri:
    out = np.where(value, _T, _F).astype(np.int8)
    out[unknown] = _U
    return out


def _and(*parts: Tri) -> Tri:
    stacked = np.stack(parts)
    out = np.where((stacked == _U).any(axis=0), _U, _T).astype(np.int8)
    out[(stacked == _F).any(axis=0)] = _F
    return out


def _not(x: Tri) -> Tri:
    return np.where(x == _U, _U, 1 - x).astype(np.int8)


def claim_table(p: Population, injected: dict[str, Injected]) -> dict[str, Tri]:
    ref = p.reference
    ids = p.id_number
    n = p.size

    # health: births
    h = injected["health"]
    b_bad = h.excluded("births", len(p.child))
    b_ok = ~b_bad
    births_named = h.named("births", ids)
    certified = np.zeros(n, dtype=bool)
    ok_cert = b_ok & ~np.isnat(p.certificate_issued) & (p.certificate_issued <= ref)
    certified[p.child[ok_cert]] = True
    health_cert = _tri(certified, births_named)

    count = np.zeros(n, dtype=np.int64)
    youngest = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    b_days = p.birth[p.child].astype(np.int64)
    for parent in (p.mother, p.father):
        np.add.at(count, parent[b_ok], 1)
        np.maximum.at(youngest, parent[b_ok], b_days[b_ok])
    cutoff = np.datetime64(years_before(ref.astype(object), 3), "D").astype(np.int64)
    three_young = _tri((count >= 3) & (youngest > cutoff), births_named)

    # police: registrations (one per registered person)
    reg_people = np.flatnonzero(~np.isnat(p.registered_since))
    r_bad = injected["police"].excluded("registrations", len(reg_people))
    registered = np.zeros(n, dtype=bool)
    registered[reg_people[~r_bad]] = True
    registered &= p.registered_since <= ref
    police_named = injected["police"].named("registrations", ids)
    police_reg = _tri(registered, police_named)
    in_district = police_reg  # evaluated for the subject's own household district
    in_province = _tri(
        registered & (np.char.ljust(p.district, 2).astype("U2") == PROVINCE), police_named
    )

    # civil: marriages and allowance
    m_bad = injected["civil"].excluded("marriages", len(p.husband))
    active_m = ~m_bad & (p.married <= ref) & (np.isnat(p.divorced) | (p.divorced > ref))
    married = np.zeros(n, dtype=bool)
    married[p.husband[active_m]] = True
    married[p.wife[active_m]] = True
    married_named = injected["civil"].named("marriages", ids)
    married_t = _tri(married, married_named)

    a_active = (p.allowance_start <= ref) & (np.isnat(p.allowance_end) | (p.allowance_end > ref))
    low_income = np.zeros(n, dtype=bool)
    low_income[p.member_person[a_active[p.member_allowance]]] = True
    low_income_t = _tri(low_income, np.zeros(n, dtype=bool))

    # hrss: maternity insurance (row n_emp + i is employee i's maternity row) and subsidy
    emp = np.flatnonzero(~np.isnat(p.employed_since))
    s_bad = injected["hrss"].excluded("social_insurance", 2 * len(emp))[len(emp) :]
    mat_until = p.maternity_until[emp]
    active_ins = ~s_bad & (p.employed_since[emp] <= ref) & (np.isnat(mat_until) | (mat_until > ref))
    maternity = np.zeros(n, dtype=bool)
    maternity[emp[active_ins]] = True
    maternity_t = _tri(maternity, injected["hrss"].named("social_insurance", ids))

    recent = (p.childcare_paid > ref - np.timedelta64(365, "D")) & (p.childcare_paid <= ref)
    paid = np.zeros(n, dtype=bool)
    paid[p.childcare_applicant[recent]] = True
    paid_t = _tri(paid, np.zeros(n, dtype=bool))

    return {
        "birth_registered": _and(health_cert, police_reg),
        "household_in_district": in_district,
        "married": married_t,
        "maternity_insurance_active": maternity_t,
        "third_child_subsidy_eligible": _and(three_young, in_province, _not(paid_t)),
        "low_income_household": low_income_t,
    }


def aggregates(p: Population, injected: dict[str, Injected]) -> Iterator[dict[str, object]]:
    ok = ~injected["health"].excluded("births", len(p.child))
    years = p.birth[p.child].astype("datetime64[Y]").astype(np.int64) + 1970
    yield from _cells(
        "births_by_district_year",
        p.birth_district[ok],
        years[ok],
        np.ones(int(ok.sum()), dtype=np.int64),
    )
    paid_year = p.maternity_paid.astype("datetime64[Y]").astype(np.int64) + 1970
    yield from _cells(
        "allowance_total_by_district_year", p.maternity_district, paid_year, p.maternity_amount
    )


def _cells(
    name: str,
    district: npt.NDArray[np.str_],
    year: npt.NDArray[np.int64],
    value: npt.NDArray[np.int64],
) -> Iterator[dict[str, object]]:
    keys = np.char.add(np.char.add(district, ":"), year.astype("U4"))
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=value, minlength=len(uniq)).astype(np.int64)
    for key, total in zip(uniq.tolist(), sums.tolist(), strict=True):
        d, y = key.split(":")
        yield {"aggregate": name, "district": d, "year": int(y), "value": int(total)}


_WORD = {_T: "true", _F: "false", _U: "null"}


def truth_lines(p: Population, injected: dict[str, Injected]) -> Iterator[str]:
    table = claim_table(p, injected)
    words = {name: np.vectorize(_WORD.__getitem__, otypes=[object])(table[name]) for name in CLAIMS}
    ids = p.id_number.tolist()
    districts = p.district.tolist()
    columns = [words[name].tolist() for name in CLAIMS]
    for i, (number, district) in enumerate(zip(ids, districts, strict=True)):
        claims = ", ".join(f'"{name}": {col[i]}' for name, col in zip(CLAIMS, columns, strict=True))
        yield f'{{"id_number": "{number}", "district": "{district}", "claims": {{{claims}}}}}\n'
    for cell in aggregates(p, injected):
        yield json.dumps(cell, sort_keys=True) + "\n"
