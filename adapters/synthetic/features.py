"""The population model's own view of the training table, to check the department files by.

Training reads its table from the departments' files (``tongban.federation.features``:
each department's ``[features]`` query over its own store). This module derives what those
queries should return from the population model directly, so a test can compare the two
(tests/test_features_from_files.py): one row per family eligible for the childcare subsidy
(a child under 3, born more than 30 days before the reference date), keyed by the mother's
ID number, unstandardised, in the population's order. The label is 1 when the family has
not been paid the subsidy (held by hrss). Whether a family claims is drawn in the
population model from a logistic model of the same attributes
(``population._claim_probability``), so the relationship is learnable but noisy.

Columns are grouped by the department that holds them (``owners``): health (births), hrss
(employment, insurance, payments) and civil (marriage, low-income allowance, district).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .population import URBAN_DISTRICTS, Population

__all__ = ["ReferenceFeatures", "reference_features"]

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mother_age", "health"),
    ("n_children", "health"),
    ("youngest_birth_order", "health"),
    ("months_since_youngest", "health"),
    ("mother_age_at_first_birth", "health"),
    ("mother_employed", "hrss"),
    ("maternity_insured", "hrss"),
    ("maternity_allowance_youngest", "hrss"),
    ("father_employed", "hrss"),
    ("mother_tenure_years", "hrss"),
    ("divorced", "civil"),
    ("low_income", "civil"),
    ("urban", "civil"),
    ("married_years", "civil"),
)


@dataclass(frozen=True)
class ReferenceFeatures:
    id_number: npt.NDArray[np.str_]  # one row per family, keyed by the mother's ID number
    district: npt.NDArray[np.str_]  # the couple's district code
    columns: tuple[str, ...]
    owners: tuple[str, ...]  # department holding each column: "health" | "hrss" | "civil"
    values: npt.NDArray[np.float64]  # (n, len(columns)), unstandardised
    label: npt.NDArray[np.int8]  # 1 = eligible for the childcare subsidy but not paid; hrss

    @property
    def rows(self) -> int:
        return len(self.id_number)

    def column(self, name: str) -> npt.NDArray[np.float64]:
        return self.values[:, self.columns.index(name)]


def _years(days: npt.NDArray[np.int64] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(days, dtype=np.float64) / 365.25


def reference_features(population: Population) -> ReferenceFeatures:
    """The table's raw values, derived from the population model."""
    p = population
    ref = p.reference
    n_couples = len(p.wife)
    couple_of_wife = np.full(p.size, -1, dtype=np.int64)
    couple_of_wife[p.wife] = np.arange(n_couples)
    fam = couple_of_wife[p.mother]  # couple of each birth

    births = p.birth[p.child].view(np.int64)
    youngest = np.full(n_couples, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(youngest, fam, births)
    oldest = np.full(n_couples, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(oldest, fam, births)
    n_children = np.bincount(fam, minlength=n_couples)
    order = np.zeros(n_couples, dtype=np.int64)
    np.maximum.at(order, fam, p.birth_order)

    ref_day = int(ref.astype(np.int64))
    has_kids = n_children > 0
    eligible = has_kids & (youngest > ref_day - 1095) & (youngest + 30 < ref_day)
    c = np.flatnonzero(eligible)
    mothers = p.wife[c]
    fathers = p.husband[c]

    def employed(person: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return np.asarray(~np.isnat(p.employed_since[person]) & np.isnat(p.employed_until[person]))

    since = p.employed_since[mothers]
    tenure = np.where(
        employed(mothers), _years((ref - since).astype("timedelta64[D]").astype(np.int64)), 0.0
    )
    insured = ~np.isnat(since) & np.isnat(p.maternity_until[mothers])
    # Maternity allowance paid for the youngest birth (one allowance per birth date).
    paid_key = set(
        zip(p.maternity_mother.tolist(), p.maternity_birth.view(np.int64).tolist(), strict=True)
    )
    allowance = np.array(
        [(int(m), int(y)) in paid_key for m, y in zip(mothers, youngest[c], strict=True)],
        dtype=bool,
    )
    active = np.isnat(p.allowance_end) | (p.allowance_end > ref)
    low_income_people = p.member_person[active[p.member_allowance]]
    low_income = np.isin(mothers, low_income_people)
    mother_birth = p.birth[mothers].view(np.int64)

    values = {
        "mother_age": _years(ref_day - mother_birth),
        "n_children": n_children[c].astype(np.float64),
        "youngest_birth_order": order[c].astype(np.float64),
        "months_since_youngest": (ref_day - youngest[c]) / 30.44,
        "mother_age_at_first_birth": _years(oldest[c] - mother_birth),
        "mother_employed": employed(mothers).astype(np.float64),
        "maternity_insured": insured.astype(np.float64),
        "maternity_allowance_youngest": allowance.astype(np.float64),
        "father_employed": employed(fathers).astype(np.float64),
        "mother_tenure_years": tenure,
        "divorced": (~np.isnat(p.divorced[c])).astype(np.float64),
        "low_income": low_income.astype(np.float64),
        "urban": np.isin(p.couple_district[c], URBAN_DISTRICTS).astype(np.float64),
        "married_years": _years(ref_day - p.married[c].view(np.int64)),
    }
    raw = np.column_stack([values[name] for name, _ in _COLUMNS])
    claimed = np.isin(mothers, p.childcare_applicant)
    return ReferenceFeatures(
        id_number=p.id_number[mothers],
        district=p.couple_district[c],
        columns=tuple(name for name, _ in _COLUMNS),
        owners=tuple(owner for _, owner in _COLUMNS),
        values=np.ascontiguousarray(raw, dtype=np.float64),
        label=(~claimed).astype(np.int8),
    )
