"""Training features for the childcare-subsidy outreach model, derived from the population.

One row per family eligible for the childcare subsidy (a child under 3, born more than 30
days before the reference date), keyed by the mother's ID number. The label is 1 when the
family has not been paid the subsidy (held by hrss): these are the families offices reach
out to. Whether a family claims is drawn in the population model from a logistic model of
the same attributes (``population._claim_probability``), so the relationship is learnable
but noisy.

Columns are grouped by the department that holds them (``owners``): health (births), hrss
(employment, insurance, payments) and civil (marriage, low-income allowance, district). They
are standardised (zero mean, unit variance over the table). Horizontal training splits rows
(per district: county bureaus); vertical training splits columns (per owner).

``tongban generate --out DIR`` writes the table to ``DIR/training/features.npz`` (plain
arrays, no pickle) with a small JSON manifest beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .population import URBAN_DISTRICTS, Population

__all__ = ["FEATURES_FILE", "FeatureTable", "build_features", "read_features", "write_features"]

FEATURES_FILE = Path("training") / "features.npz"
_MANIFEST = "features.json"

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
class FeatureTable:
    id_number: npt.NDArray[np.str_]  # one row per family, keyed by the mother's ID number
    district: npt.NDArray[np.str_]  # household district code (primitives.regions.DISTRICTS)
    columns: tuple[str, ...]  # feature names
    owners: tuple[str, ...]  # department holding each column: "health" | "hrss" | "civil"
    X: npt.NDArray[np.float64]  # (n, len(columns)), standardised
    label: npt.NDArray[np.int8]  # 1 = eligible for the childcare subsidy but not applied; hrss

    def __post_init__(self) -> None:
        n = len(self.id_number)
        if self.X.shape != (n, len(self.columns)) or len(self.owners) != len(self.columns):
            raise ValueError("features: X must be (rows, columns) with one owner per column")
        if len(self.district) != n or len(self.label) != n:
            raise ValueError("features: district and label need one entry per row")

    @property
    def rows(self) -> int:
        return len(self.id_number)

    def columns_of(self, owner: str) -> npt.NDArray[np.int64]:
        """Indices of the columns held by one department."""
        return np.flatnonzero(np.array(self.owners) == owner).astype(np.int64)

    def take(self, rows: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> FeatureTable:
        """A subset of the rows (columns and standardisation unchanged)."""
        return FeatureTable(
            self.id_number[rows],
            self.district[rows],
            self.columns,
            self.owners,
            self.X[rows],
            self.label[rows],
        )


def _years(days: npt.NDArray[np.int64] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(days, dtype=np.float64) / 365.25


def build_features(population: Population, seed: int) -> FeatureTable:
    """Derive the table from the population model. ``seed`` shuffles the row order, so any
    contiguous slice of the rows is a random sample."""
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
    mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
    std = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
    scaled = (raw - mean) / np.where(std > 0, std, 1.0)

    claimed = np.isin(mothers, p.childcare_applicant)
    label = (~claimed).astype(np.int8)
    shuffle = np.random.default_rng(seed).permutation(len(c))
    return FeatureTable(
        id_number=p.id_number[mothers][shuffle],
        district=p.couple_district[c][shuffle],
        columns=tuple(name for name, _ in _COLUMNS),
        owners=tuple(owner for _, owner in _COLUMNS),
        X=np.ascontiguousarray(scaled[shuffle], dtype=np.float64),
        label=label[shuffle],
    )


def _path(data_dir: Path) -> Path:
    direct = data_dir / FEATURES_FILE.name
    return direct if direct.exists() else data_dir / FEATURES_FILE


def write_features(table: FeatureTable, data_dir: Path) -> None:
    """Write ``data_dir/training/features.npz`` and a manifest (columns, owners, rates)."""
    path = data_dir / FEATURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        id_number=table.id_number.astype("U18"),
        district=table.district.astype("U6"),
        columns=np.array(table.columns, dtype=str),
        owners=np.array(table.owners, dtype=str),
        X=table.X,
        label=table.label,
    )
    tmp.replace(path)
    manifest = {
        "rows": table.rows,
        "columns": list(table.columns),
        "owners": list(table.owners),
        "positive_rate": round(float(table.label.mean()), 4) if table.rows else None,
        "districts": {
            str(d): int(n)
            for d, n in zip(*np.unique(table.district, return_counts=True), strict=True)
        },
    }
    (path.parent / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_features(data_dir: Path) -> FeatureTable:
    """Read what :func:`write_features` wrote (``data_dir`` is the generate output directory
    or its ``training/`` subdirectory)."""
    path = _path(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"no training features under {data_dir} (run tongban generate)")
    with np.load(path, allow_pickle=False) as z:
        return FeatureTable(
            id_number=z["id_number"],
            district=z["district"],
            columns=tuple(str(s) for s in z["columns"]),
            owners=tuple(str(s) for s in z["owners"]),
            X=z["X"].astype(np.float64),
            label=z["label"].astype(np.int8),
        )
