"""The training table, read from the departments' files.

One row per family eligible for the childcare subsidy (a child under 3, born more than 30
days before the reference date), keyed by the mother's ID number; the label is 1 when the
family has not been paid the subsidy, so offices reach out to it. Each department computes
its own columns with a ``[features.NAME]`` query in its department file
(``adapters/departments/{health,hrss,civil}.toml``), over its own tables: a department's
rows come only through ``LiveSource.feature_rows``. Besides, only the managed store's
``meta`` is read (its reference date, and whether it is sealed at rest).

The sets are joined on the subject (:data:`TRAINING_SETS`):

- health's ``families`` names the eligible families: the table's rows;
- civil's ``marriage`` is required: a mother civil holds no marriage of is left out (her
  marriage record was refused at ingest); its ``district`` column is the row's county
  bureau for horizontal training, not a model input;
- hrss's ``employment`` is optional: a mother hrss holds no record of has 0 in each column;
- hrss's ``childcare_subsidy`` (``childcare_subsidy_paid``) is the label, optional: no
  payment is label 1.

A NULL value (NaN) in a row means its department does not know (a record about the subject
was quarantined): the row is left out. Columns are standardised over the table (zero mean,
unit variance) and rows are in a seeded random order, so any contiguous slice is a random
sample.

Reading takes a few seconds on a large population and every Flower ClientApp process
needs the table, so :func:`load_training_table` keeps it in ``DIR/training/table.npz``,
valid while the department files' feature sets and the SQLite store files are unchanged
(a server store is read every time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "CACHE_FILE",
    "TRAINING_SETS",
    "FeatureRows",
    "FeatureTable",
    "JoinedRows",
    "SealedStore",
    "SetSpec",
    "join_feature_sets",
    "load_training_table",
    "read_training_rows",
    "standardise",
]

CACHE_FILE = Path("training") / "table.npz"
_MANIFEST = "table.json"
PARTITION_COLUMN = "district"
LABEL_COLUMN = "childcare_subsidy_paid"


@dataclass(frozen=True)
class FeatureTable:
    id_number: npt.NDArray[np.str_]  # one row per family, keyed by the mother's ID number
    district: npt.NDArray[np.str_]  # household district code (primitives.regions.DISTRICTS)
    columns: tuple[str, ...]  # feature names
    owners: tuple[str, ...]  # department holding each column: "health" | "hrss" | "civil"
    X: npt.NDArray[np.float64]  # (n, len(columns)), standardised
    label: npt.NDArray[np.int8]  # 1 = eligible for the childcare subsidy but not paid; hrss

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


@dataclass(frozen=True)
class SetSpec:
    """One department's feature set in the training table. ``role``: ``rows`` (its
    subjects are the table's rows), ``required`` (a row it has no subject for is left
    out), ``optional`` (0 in each column for a subject it has no row for) or ``label``
    (optional, its one column is 1 when the subject is *not* a positive)."""

    department: str
    features: str
    role: str


TRAINING_SETS: tuple[SetSpec, ...] = (
    SetSpec("health", "families", "rows"),
    SetSpec("hrss", "employment", "optional"),
    SetSpec("civil", "marriage", "required"),
    SetSpec("hrss", "childcare_subsidy", "label"),
)
DEPARTMENTS = tuple(dict.fromkeys(s.department for s in TRAINING_SETS))

FeatureRows = Iterable[tuple[str, tuple[float, ...]]]


@dataclass(frozen=True)
class JoinedRows:
    """The joined, unstandardised table in subject order."""

    id_number: npt.NDArray[np.str_]
    district: npt.NDArray[np.str_]
    columns: tuple[str, ...]
    owners: tuple[str, ...]
    values: npt.NDArray[np.float64]
    label: npt.NDArray[np.int8]
    dropped: Mapping[str, int]  # rows left out, by reason


def join_feature_sets(
    sets: Mapping[SetSpec, tuple[tuple[str, ...], FeatureRows]],
    specs: tuple[SetSpec, ...] = TRAINING_SETS,
) -> JoinedRows:
    """Join each spec's ``(columns, rows)`` on the subject, as :data:`TRAINING_SETS`
    describes. A subject twice in one set is left out (its department holds two
    conflicting rows)."""
    by_spec: dict[SetSpec, dict[str, tuple[float, ...]]] = {}
    twice: set[str] = set()
    for spec in specs:
        seen: dict[str, tuple[float, ...]] = {}
        for subject, found in sets[spec][1]:
            if subject in seen:
                twice.add(subject)
            seen[subject] = found
        by_spec[spec] = seen
    widths = {spec: len(sets[spec][0]) for spec in specs}
    columns, owners, partition_at = _layout(sets, specs)
    (rows_spec,) = [s for s in specs if s.role == "rows"]
    dropped = {"unknown": 0, "duplicate": 0, "missing": 0}
    ids: list[str] = []
    districts: list[str] = []
    values: list[list[float]] = []
    labels: list[int] = []
    for subject in sorted(by_spec[rows_spec]):
        if subject in twice:
            dropped["duplicate"] += 1
            continue
        got = _row(subject, by_spec, widths, specs, partition_at)
        if isinstance(got, str):
            dropped[got] += 1
            continue
        row, district, paid = got
        ids.append(subject)
        districts.append(district)
        values.append(row)
        labels.append(0 if paid > 0 else 1)
    return JoinedRows(
        id_number=np.array(ids, dtype="U18"),
        district=np.array(districts, dtype="U6"),
        columns=columns,
        owners=owners,
        values=np.array(values, dtype=np.float64).reshape(len(ids), len(columns)),
        label=np.array(labels, dtype=np.int8),
        dropped=dropped,
    )


def _layout(
    sets: Mapping[SetSpec, tuple[tuple[str, ...], FeatureRows]], specs: tuple[SetSpec, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[SetSpec, int]]:
    """The model's columns, their owners, and where the partition column is."""
    columns: list[str] = []
    owners: list[str] = []
    partition_at: tuple[SetSpec, int] | None = None
    for spec in specs:
        names = sets[spec][0]
        if spec.role == "label":
            if names != (LABEL_COLUMN,):
                raise ValueError(f"{spec.department}.{spec.features}: expected {LABEL_COLUMN}")
            continue
        for i, name in enumerate(names):
            if name == PARTITION_COLUMN:
                partition_at = (spec, i)
            else:
                columns.append(name)
                owners.append(spec.department)
    if partition_at is None:
        raise ValueError(f"no feature set has a {PARTITION_COLUMN} column")
    return tuple(columns), tuple(owners), partition_at


def _row(
    subject: str,
    by_spec: Mapping[SetSpec, Mapping[str, tuple[float, ...]]],
    widths: Mapping[SetSpec, int],
    specs: tuple[SetSpec, ...],
    partition_at: tuple[SetSpec, int],
) -> tuple[list[float], str, float] | str:
    """One subject's model values, district and label value, or why it is left out."""
    row: list[float] = []
    district = ""
    paid = 0.0
    for spec in specs:
        got = by_spec[spec].get(subject)
        if got is None:
            if spec.role in ("rows", "required"):
                return "missing"
            got = (0.0,) * widths[spec]
        if any(math.isnan(v) for v in got):
            return "unknown"
        if spec.role == "label":
            paid = got[0]
            continue
        for i, v in enumerate(got):
            if (spec, i) == partition_at:
                district = str(int(v))
            else:
                row.append(v)
    return row, district, paid


def standardise(joined: JoinedRows, seed: int = 0) -> FeatureTable:
    """Zero mean, unit variance per column over the table, rows in a seeded order."""
    raw = joined.values
    mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
    std = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
    scaled = (raw - mean) / np.where(std > 0, std, 1.0)
    shuffle = np.random.default_rng(seed).permutation(len(raw))
    return FeatureTable(
        id_number=joined.id_number[shuffle],
        district=joined.district[shuffle],
        columns=joined.columns,
        owners=joined.owners,
        X=np.ascontiguousarray(scaled[shuffle], dtype=np.float64),
        label=joined.label[shuffle],
    )


# --- reading the departments ---------------------------------------------------------


def _store_urls(data_dir: Path, store_urls: Mapping[str, str] | None) -> dict[str, str]:
    from tongban.config import Settings

    settings = Settings(data_dir=data_dir, store_urls=dict(store_urls or {}))
    return {name: settings.store_url(name) for name in DEPARTMENTS}


def _department_files() -> dict[str, Path]:
    from tongban.adapters.builtin import builtin_file

    return {name: builtin_file(name) for name in DEPARTMENTS}


def read_training_rows(
    data_dir: Path,
    *,
    store_urls: Mapping[str, str] | None = None,
    today: dt.date | None = None,
) -> JoinedRows:
    """Each department's feature sets over the managed store of ``data_dir`` (or
    ``store_urls``), joined. ``today`` defaults to the stores' reference date."""
    from tongban.adapters.deptfile import load_department_file
    from tongban.adapters.live import LiveSource
    from tongban.boundary import missing_sqlite_file

    urls = _store_urls(data_dir, store_urls)
    for name, url in urls.items():
        missing = missing_sqlite_file(url)
        if missing is not None:
            raise FileNotFoundError(
                f"no training data under {data_dir}: no {name} store at {missing} "
                "(run tongban generate)"
            )
    files = _department_files()
    sources = {name: LiveSource(load_department_file(files[name]), urls[name]) for name in urls}
    try:
        day = today or _reference_date(sources)
        sets: dict[SetSpec, tuple[tuple[str, ...], FeatureRows]] = {}
        for spec in TRAINING_SETS:
            source = sources[spec.department]
            _refuse_sealed(source)
            declared = source.dept.features.get(spec.features)
            if declared is None:
                raise ValueError(
                    f"{files[spec.department]}: no [features.{spec.features}] (training needs it)"
                )
            rows = list(source.feature_rows(spec.features, today=day))
            sets[spec] = (declared.columns, rows)
        return join_feature_sets(sets)
    finally:
        for source in sources.values():
            source.dispose()


def _reference_date(sources: Mapping[str, object]) -> dt.date:
    """The stores' declared reference date (a generated data set's), else today."""
    from sqlalchemy import text

    from tongban.adapters.live import LiveSource

    days: set[dt.date] = set()
    for source in sources.values():
        assert isinstance(source, LiveSource)
        with source.reading() as conn:
            value = conn.execute(
                text("SELECT value FROM meta WHERE key = 'reference_date'")
            ).scalar()
        days.add(dt.date.fromisoformat(value) if value else dt.date.today())
    if len(days) != 1:
        raise ValueError("the department stores declare different reference dates")
    return days.pop()


class SealedStore(ValueError):
    """A department store is encrypted at rest: the files' features cannot be computed."""


def _refuse_sealed(source: object) -> None:
    """A sealed store holds blind-index tokens, not ID numbers: the ages the files compute
    from the number and the join across departments need the numbers."""
    from sqlalchemy import text

    from tongban.adapters.live import LiveSource

    assert isinstance(source, LiveSource)
    with source.reading() as conn:
        sealed = conn.execute(text("SELECT COUNT(*) FROM meta WHERE key = 'at_rest'")).scalar()
    if sealed:
        raise SealedStore(
            f"{source.dept.name}: the store is encrypted at rest; training reads plain stores "
            "(or the table built before they were sealed, as `tongban demo` builds it)"
        )


# --- the cached table ------------------------------------------------------------------


def _fingerprint(
    data_dir: Path, store_urls: Mapping[str, str] | None, seed: int, *, logical: bool = False
) -> str | None:
    """What the cached table depends on: the feature sets of the files and the SQLite
    store files (None when a store is a server database: no cache). ``logical``: the
    generated data the stores hold (their ``meta``) instead of the files' size and time,
    which identifies a table built before the stores were sealed at rest."""
    from sqlalchemy.engine import make_url

    from tongban.adapters.deptfile import load_department_file

    parts: list[object] = [seed]
    files = _department_files()
    for name, url in _store_urls(data_dir, store_urls).items():
        dept = load_department_file(files[name])
        for spec in TRAINING_SETS:
            fs = dept.features.get(spec.features) if spec.department == name else None
            if fs is not None:
                parts.append([name, fs.name, fs.sql, list(fs.columns), sorted(fs.dates)])
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database:
            return None
        if logical:
            meta = _generated(parsed.database)
            if meta is None:
                return None
            parts.append([name, meta])
            continue
        try:
            st = os.stat(parsed.database)
        except OSError:
            return None
        parts.append([name, str(Path(parsed.database).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _generated(database: str) -> list[str] | None:
    """What a generated store says it was generated as (its ``meta`` generator and
    reference date): the same after sealing it at rest, which rewrites the file."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = dict(
            conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('generator', 'reference_date')"
            ).fetchall()
        )
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if "generator" not in rows:
        return None
    return [rows["generator"], rows.get("reference_date", "")]


def load_training_table(
    data_dir: Path,
    *,
    store_urls: Mapping[str, str] | None = None,
    seed: int = 0,
    cache: bool = True,
) -> FeatureTable:
    """The training table of ``data_dir``'s department stores, read through their files
    (from ``DIR/training/table.npz`` while it is current)."""
    fingerprint = _fingerprint(data_dir, store_urls, seed) if cache else None
    path = data_dir / CACHE_FILE
    if fingerprint is not None:
        cached = _read_cache(path, fingerprint)
        if cached is not None:
            return cached
    try:
        joined = read_training_rows(data_dir, store_urls=store_urls)
    except SealedStore:
        # Stores sealed after the table was built from them (tongban demo builds it, then
        # seals): the cache of the same generated data stands in for the plain stores.
        logical = _fingerprint(data_dir, store_urls, seed, logical=True) if cache else None
        cached = _read_cache(path, logical, key="logical") if logical is not None else None
        if cached is None:
            raise
        return cached
    table = standardise(joined, seed)
    if fingerprint is not None:
        logical = _fingerprint(data_dir, store_urls, seed, logical=True) or ""
        _write_cache(path, table, fingerprint, joined.dropped, logical=logical)
    return table


def _read_cache(path: Path, fingerprint: str, *, key: str = "fingerprint") -> FeatureTable | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not fingerprint or str(z[key]) != fingerprint:
                return None
            return FeatureTable(
                id_number=z["id_number"],
                district=z["district"],
                columns=tuple(str(s) for s in z["columns"]),
                owners=tuple(str(s) for s in z["owners"]),
                X=z["X"].astype(np.float64),
                label=z["label"].astype(np.int8),
            )
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(
    path: Path,
    table: FeatureTable,
    fingerprint: str,
    dropped: Mapping[str, int],
    *,
    logical: str = "",
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        fingerprint=np.array(fingerprint),
        logical=np.array(logical),
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
        "left_out": dict(dropped),
        "positive_rate": round(float(table.label.mean()), 4) if table.rows else None,
        "districts": {
            str(d): int(n)
            for d, n in zip(*np.unique(table.district, return_counts=True), strict=True)
        },
    }
    (path.parent / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
