"""Department record batches from the population model, with realistic errors injected.

Each department's batches are derived from the model in a fixed row order, so an injected
error is known by (table, row). The injection uses its own seeded stream per department,
which keeps it independent of the order departments are processed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..builtin import builtin_names
from .population import Population

__all__ = ["DEPARTMENT_ORDER", "ERROR_RATE", "Injected", "department_batches"]

# The built-in departments (their files are the registry), in the registry's order.
DEPARTMENT_ORDER = builtin_names()
ERROR_RATE = 0.003  # per injected kind, of the records it applies to

Batch = dict[str, npt.NDArray[np.generic]]
_CHECK_ROTATE = str.maketrans("0123456789X", "123456789X0")


@dataclass
class Injected:
    """Which rows of which table were corrupted, by kind."""

    rows: dict[str, dict[str, npt.NDArray[np.int64]]] = field(default_factory=dict)
    # The ID numbers, as stored, in the corrupted records: who the quarantine names.
    stored_ids: dict[str, npt.NDArray[np.str_]] = field(default_factory=dict)

    def add(self, table: str, kind: str, rows: npt.NDArray[np.int64]) -> None:
        self.rows.setdefault(table, {})[kind] = rows

    def excluded(self, table: str, n: int) -> npt.NDArray[np.bool_]:
        mask = np.zeros(n, dtype=bool)
        for rows in self.rows.get(table, {}).values():
            mask[rows] = True
        return mask

    def named(self, table: str, people: npt.NDArray[np.str_]) -> npt.NDArray[np.bool_]:
        stored = self.stored_ids.get(table)
        if stored is None or len(stored) == 0:
            return np.zeros(len(people), dtype=bool)
        return np.isin(people, stored)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kinds in self.rows.values():
            for kind, rows in kinds.items():
                out[kind] = out.get(kind, 0) + len(rows)
        return out


def _pick(
    rng: np.random.Generator, candidates: npt.NDArray[np.int64], taken: set[int]
) -> npt.NDArray[np.int64]:
    pool = np.array([c for c in candidates.tolist() if c not in taken], dtype=np.int64)
    if len(pool) < 50:
        return np.zeros(0, dtype=np.int64)
    count = max(1, round(ERROR_RATE * len(candidates)))
    chosen = np.sort(rng.choice(pool, size=count, replace=False))
    taken.update(chosen.tolist())
    return chosen


def _bad_check(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.array([s[:17] + s[17].translate(_CHECK_ROTATE) for s in ids.tolist()], dtype="U18")


def _bad_date(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.array([s[:10] + "13" + s[12:] for s in ids.tolist()], dtype="U18")


def _legacy_15(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    """First-generation 15-digit numbers: no century, no check digit."""
    return np.array([s[:6] + s[8:17] for s in ids.tolist()], dtype="U18")


def _health(p: Population, rng: np.random.Generator, inj: Injected) -> dict[str, Batch]:
    ids = p.id_number
    births: Batch = {
        "id": np.arange(1, len(p.child) + 1, dtype=np.int64),
        "child_id": ids[p.child].copy(),
        "mother_id": ids[p.mother],
        "father_id": ids[p.father],
        "birth_date": p.birth[p.child].copy(),
        "birth_order": p.birth_order,
        "certificate_no": p.certificate_no,
        "certificate_issued": p.certificate_issued.copy(),
        "district": p.birth_district,
    }
    taken: set[int] = set()
    everything = np.arange(len(p.child), dtype=np.int64)
    rows = _pick(rng, everything, taken)
    births["child_id"][rows] = _bad_check(births["child_id"][rows])  # type: ignore[arg-type]
    inj.add("births", "bad_check_digit", rows)
    rows = _pick(rng, everything, taken)
    mother_birth = p.birth[p.mother[rows]]
    births["birth_date"][rows] = mother_birth + rng.integers(3000, 5000, len(rows)).astype(
        "timedelta64[D]"
    )
    inj.add("births", "mother_under_14", rows)
    issued = np.flatnonzero(~np.isnat(p.certificate_issued)).astype(np.int64)
    rows = _pick(rng, issued, taken)
    births["certificate_issued"][rows] = births["birth_date"][rows] - rng.integers(
        1, 31, len(rows)
    ).astype("timedelta64[D]")
    inj.add("births", "certificate_before_birth", rows)
    return {"births": births}


def _police(p: Population, rng: np.random.Generator, inj: Injected) -> dict[str, Batch]:
    who = np.flatnonzero(~np.isnat(p.registered_since))
    regs: Batch = {
        "id": np.arange(1, len(who) + 1, dtype=np.int64),
        "person_id": p.id_number[who].copy(),
        "household_no": p.household_no[who],
        "district": p.district[who],
        "relation": p.relation[who],
        "since": p.registered_since[who],
    }
    taken: set[int] = set()
    everything = np.arange(len(who), dtype=np.int64)
    rows = _pick(rng, everything, taken)
    regs["person_id"][rows] = _bad_date(regs["person_id"][rows])  # type: ignore[arg-type]
    inj.add("registrations", "bad_date", rows)
    rows = _pick(rng, everything, taken)
    regs["person_id"][rows] = _bad_check(regs["person_id"][rows])  # type: ignore[arg-type]
    inj.add("registrations", "bad_check_digit", rows)
    return {"registrations": regs}


def _civil(p: Population, rng: np.random.Generator, inj: Injected) -> dict[str, Batch]:
    ids = p.id_number
    marriages: Batch = {
        "id": np.arange(1, len(p.husband) + 1, dtype=np.int64),
        "party_a": ids[p.husband],
        "party_b": ids[p.wife].copy(),
        "since": p.married,
        "until": p.divorced,
        "district": p.couple_district,
    }
    rows = _pick(rng, np.arange(len(p.husband), dtype=np.int64), set())
    marriages["party_b"][rows] = _bad_check(marriages["party_b"][rows])  # type: ignore[arg-type]
    inj.add("marriages", "bad_check_digit", rows)
    allowance: Batch = {
        "allowance_no": p.allowance_no,
        "applicant_id": ids[p.allowance_applicant],
        "district": p.allowance_district,
        "start_date": p.allowance_start,
        "end_date": p.allowance_end,
        "monthly_amount": p.allowance_monthly,
    }
    members: Batch = {
        "id": np.arange(1, len(p.member_person) + 1, dtype=np.int64),
        "allowance_no": p.allowance_no[p.member_allowance],
        "member_id": ids[p.member_person],
    }
    return {
        "marriages": marriages,
        "low_income_allowance": allowance,
        "low_income_members": members,
    }


def _hrss(p: Population, rng: np.random.Generator, inj: Injected) -> dict[str, Batch]:
    ids = p.id_number
    emp = np.flatnonzero(~np.isnat(p.employed_since))
    employment: Batch = {
        "id": np.arange(1, len(emp) + 1, dtype=np.int64),
        "person_id": ids[emp],
        "employer_code": p.employer_code[emp],
        "start_date": p.employed_since[emp],
        "end_date": p.employed_until[emp],
    }
    n = len(emp)
    # Pension rows first, then maternity rows: social_insurance row n + i is emp[i]'s maternity.
    insurance: Batch = {
        "id": np.arange(1, 2 * n + 1, dtype=np.int64),
        "person_id": np.concatenate([ids[emp], ids[emp]]),
        "insurance_type": np.array(["pension"] * n + ["maternity"] * n, dtype="U16"),
        "start_date": np.concatenate([p.employed_since[emp], p.employed_since[emp]]),
        "end_date": np.concatenate([p.employed_until[emp], p.maternity_until[emp]]),
        "district": np.concatenate([p.district[emp], p.district[emp]]),
    }
    rows = _pick(rng, np.arange(n, 2 * n, dtype=np.int64), set())
    insurance["person_id"][rows] = _legacy_15(insurance["person_id"][rows])  # type: ignore[arg-type]
    inj.add("social_insurance", "bad_length", rows)
    maternity: Batch = {
        "id": np.arange(1, len(p.maternity_mother) + 1, dtype=np.int64),
        "person_id": ids[p.maternity_mother],
        "child_birth_date": p.maternity_birth,
        "paid_date": p.maternity_paid,
        "amount": p.maternity_amount,
        "district": p.maternity_district,
    }
    childcare: Batch = {
        "id": np.arange(1, len(p.childcare_applicant) + 1, dtype=np.int64),
        "applicant_id": ids[p.childcare_applicant],
        "child_id": ids[p.childcare_child],
        "paid_date": p.childcare_paid,
        "amount": np.full(len(p.childcare_applicant), 3600, dtype=np.int64),
    }
    return {
        "employment": employment,
        "social_insurance": insurance,
        "maternity_allowance_payments": maternity,
        "childcare_subsidy_payments": childcare,
    }


def _medins(p: Population, rng: np.random.Generator, inj: Injected) -> dict[str, Batch]:
    scheme = np.where(
        ~np.isnat(p.employed_since) & np.isnat(p.employed_until), "employee", "resident"
    )
    insured: Batch = {
        "id": np.arange(1, p.size + 1, dtype=np.int64),
        "person_id": p.id_number.copy(),
        "scheme": scheme.astype("U16"),
        "start_date": p.medins_start,
        "end_date": p.medins_end,
        "district": p.district,
    }
    rows = _pick(rng, np.arange(p.size, dtype=np.int64), set())
    insured["person_id"][rows] = _bad_check(insured["person_id"][rows])  # type: ignore[arg-type]
    inj.add("insured_periods", "bad_check_digit", rows)
    return {"insured_periods": insured}


_BUILDERS: dict[str, Callable[[Population, np.random.Generator, Injected], dict[str, Batch]]] = {
    "health": _health,
    "police": _police,
    "civil": _civil,
    "hrss": _hrss,
    "medins": _medins,
}


# ID-number columns per table, as the generator writes them.
_ID_COLUMNS = {
    "births": ("child_id", "mother_id", "father_id"),
    "registrations": ("person_id",),
    "marriages": ("party_a", "party_b"),
    "social_insurance": ("person_id",),
    "insured_periods": ("person_id",),
}


def _stream_key(department: str) -> int:
    """The department's own entropy word for its error-injection stream."""
    return int.from_bytes(department.encode("utf-8"), "big")


def department_batches(
    p: Population, department: str, seed: int
) -> tuple[dict[str, Batch], Injected]:
    # Keyed by the name, not a position in the registry: adding or renaming another
    # department leaves this one's errors where they were.
    rng = np.random.default_rng([seed, _stream_key(department), 0x7B])
    injected = Injected()
    batches = _BUILDERS[department](p, rng, injected)
    for table, kinds in injected.rows.items():
        rows = np.concatenate(list(kinds.values())) if kinds else np.zeros(0, dtype=np.int64)
        injected.stored_ids[table] = np.concatenate(
            [np.asarray(batches[table][c])[rows] for c in _ID_COLUMNS[table]]
        ).astype("U18")
    return batches, injected
