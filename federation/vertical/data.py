"""Department views of the training table, a synthetic table for benchmarks, and the
centralised reference model.

Vertical partitions are columns: each department holds its own columns (``owners``) for
its *own* citizens. Registers are never complete, so each department misses a different,
seeded share of the families; PSI finds the families all of them hold. Only hrss holds
the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..features import FeatureTable

__all__ = [
    "DEPARTMENTS",
    "LABEL_HOLDER",
    "DepartmentView",
    "fit_centralized",
    "split_departments",
    "synthetic_table",
]

DEPARTMENTS = ("hrss", "health", "civil")
LABEL_HOLDER = "hrss"

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DepartmentView:
    """What one department holds locally: its IDs, its columns, and (hrss only) labels."""

    name: str
    ids: npt.NDArray[np.str_]
    columns: tuple[str, ...]
    X: Floats
    labels: npt.NDArray[np.int8] | None


def split_departments(
    table: FeatureTable, *, missing: float = 0.05, seed: int = 0
) -> dict[str, DepartmentView]:
    """Each department's rows (all but a random ``missing`` share) and columns."""
    if not 0.0 <= missing < 1.0:
        raise ValueError("missing: expected a share in [0, 1)")
    rng = np.random.default_rng(seed)
    views: dict[str, DepartmentView] = {}
    for name in DEPARTMENTS:
        cols = table.columns_of(name)
        if not len(cols):
            raise ValueError(f"{name}: the table has no columns for this department")
        keep = np.sort(rng.permutation(table.rows)[: table.rows - int(missing * table.rows)])
        views[name] = DepartmentView(
            name=name,
            ids=table.id_number[keep],
            columns=tuple(table.columns[c] for c in cols),
            X=np.ascontiguousarray(table.X[np.ix_(keep, cols)]),
            labels=table.label[keep] if name == LABEL_HOLDER else None,
        )
    return views


def synthetic_table(
    rows: int, features_per_department: int | tuple[int, ...], seed: int = 0
) -> FeatureTable:
    """Standard-normal features with a known logistic signal, split over the departments."""
    per = (
        (features_per_department,) * len(DEPARTMENTS)
        if isinstance(features_per_department, int)
        else features_per_department
    )
    rng = np.random.default_rng(seed)
    d = sum(per)
    x = rng.standard_normal((rows, d))
    w = rng.normal(0.0, 1.5 / np.sqrt(d), d)
    z = x @ w - 1.0
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.int8)
    owners = tuple(name for name, k in zip(DEPARTMENTS, per, strict=True) for _ in range(k))
    ids = np.array([f"S{seed:04d}{i:010d}" for i in range(rows)])
    return FeatureTable(
        id_number=ids,
        district=np.full(rows, "000000"),
        columns=tuple(f"{o}_{i}" for i, o in enumerate(owners)),
        owners=owners,
        X=x,
        label=label,
    )


def fit_centralized(
    x: Floats, y: npt.NDArray[np.int8], l2: float, iterations: int = 25
) -> tuple[Floats, float]:
    """L2-regularised logistic regression on the joined data, by Newton's method."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0  # the bias is not penalised, as in the federated model
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (p - y) / n + penalty * theta
        hess = (design * (p * (1 - p))[:, None]).T @ design / n + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-9 * np.eye(d + 1), grad)
        theta -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return theta[:-1], float(theta[-1])
