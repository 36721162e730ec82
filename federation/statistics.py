"""The declared registry of encrypted statistics: what may be asked, of whom, in what shape.

A statistic is data, not code: its name, the department(s) that contribute a local vector,
its enumerated parameters, its cells (one counter per district, in
:data:`primitives.regions.DISTRICTS` order) and the bound every department's value must
respect, which is what makes packed sums overflow-free (see :mod:`federation.packing`).

Statistics whose value is not itself a head count (a sum of yuan) carry a **companion
count**: the contributed vector is ``values + counts``, so that the analyst, the only party
that ever sees plaintext, can suppress cells with fewer than ``threshold`` contributing
records rather than cells with a small amount.

Both ends import this module: the gateway validates jobs against it, each adapter refuses
a statistic it does not contribute to, and the analyst rebuilds the packing layout from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tongban.primitives.errors import BadRequest
from tongban.primitives.params import check_enumerated
from tongban.primitives.regions import DISTRICTS

from .dp import DiscreteLaplace, parse_epsilon
from .packing import PackingLayout

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_PARTIES",
    "MAX_THRESHOLD",
    "REGISTRY",
    "STATISTICS_PATH",
    "YEARS",
    "Release",
    "StatParam",
    "Statistic",
    "StatisticsRegistry",
    "UnknownStatistic",
]

#: Enumerated, like predicate parameters: free-form values would invite differencing.
YEARS: tuple[str, ...] = tuple(str(y) for y in range(2000, 2027))
#: Upper bound on contributions to one job (the layout's ``parties``).
MAX_PARTIES = 64
#: Cells with fewer contributing records are suppressed (configurable per gateway and, as
#: a floor the gateway cannot lower, per department).
DEFAULT_THRESHOLD = 10
MAX_THRESHOLD = 1000


@dataclass(frozen=True, slots=True)
class Release:
    """How a job's cells are protected before anybody sees them: the suppression
    threshold, and the ε of distributed discrete Laplace noise (``None``: no noise).

    The gateway puts it in every signed contribution request and each department echoes
    what it applied in its signed answer, so the analyst's decoding and the audit entry
    rest on what the departments actually did."""

    threshold: int = DEFAULT_THRESHOLD
    epsilon: float | None = None

    @classmethod
    def from_json(cls, body: object) -> Release:
        if not isinstance(body, Mapping) or set(body) - {"threshold", "epsilon"}:
            raise BadRequest("release: expected {threshold, epsilon}")
        threshold = body.get("threshold")
        if type(threshold) is not int or not 1 <= threshold <= MAX_THRESHOLD:
            raise BadRequest(f"release.threshold: expected 1..{MAX_THRESHOLD}")
        epsilon = body.get("epsilon")
        return cls(threshold, None if epsilon is None else parse_epsilon(epsilon))

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "epsilon": self.epsilon}


STATISTICS_PATH = "/v1/statistics"
"""Where an analyst finds the statistics on offer (an unknown-statistic problem points there,
in ``detail`` and as its ``statistics`` member)."""


class UnknownStatistic(BadRequest):
    slug = "unknown-statistic"
    title = "Unknown statistic"


@dataclass(frozen=True, slots=True)
class StatParam:
    name: str
    values: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Statistic:
    name: str
    title: str
    departments: tuple[str, ...]
    params: tuple[StatParam, ...]
    cells: tuple[str, ...]  # district codes, in DISTRICTS order
    value_bound: int  # per department and cell; adapters refuse larger values
    #: True when each value is a count of records; otherwise a count companion is added.
    counts_records: bool = True
    #: For sums: the most one record may add to its cell (larger amounts are clipped to it
    #: under differential privacy): the values' L1 sensitivity. Counts have sensitivity 1.
    record_bound: int = 1

    def __post_init__(self) -> None:
        if not self.departments or len(set(self.departments)) != len(self.departments):
            raise ValueError(f"{self.name}: expected distinct departments")
        if not self.cells or len(set(self.cells)) != len(self.cells):
            raise ValueError(f"{self.name}: expected distinct cells")
        if type(self.value_bound) is not int or self.value_bound < 1:
            raise ValueError(f"{self.name}: value_bound must be a positive integer")

    @property
    def counters(self) -> int:
        """Counters per contributed vector: the cells, plus their counts if companion."""
        return len(self.cells) * (1 if self.counts_records else 2)

    def check_params(self, params: object) -> dict[str, str]:
        """Exactly the declared parameters, each with an enumerated value."""
        return check_enumerated(self.name, params, {p.name: p.values for p in self.params})

    def noise(self, release: Release, parties: int) -> tuple[DiscreteLaplace, ...]:
        """The noise of each released part (values, then counts if companion); empty
        without ε. ε is split evenly between the parts (sequential composition)."""
        if release.epsilon is None:
            return ()
        if self.counts_records:
            return (DiscreteLaplace(release.epsilon, 1, parties),)
        half = release.epsilon / 2
        return (
            DiscreteLaplace(half, self.record_bound, parties),
            DiscreteLaplace(half, 1, parties),
        )

    def offsets(self, release: Release, parties: int) -> list[int]:
        """Per counter: the offset each party adds to carry its clipped noise share."""
        parts = self.noise(release, parties)
        if not parts:
            return [0] * self.counters
        return [p.offset for p in parts for _ in self.cells]

    def suppressed_by_departments(self, release: Release) -> bool:
        """Whether the contributing department suppresses small cells itself. Only a sole
        contributor sees the cell totals before encryption, and only without noise (under
        DP, suppressing on the true count would itself leak): otherwise the analyst
        suppresses on the decrypted (noisy) counts, as published with the job."""
        return len(self.departments) == 1 and release.epsilon is None

    def check_parties(self, parties: object) -> int:
        if type(parties) is not int or not len(self.departments) <= parties <= MAX_PARTIES:
            raise BadRequest(f"parties: expected {len(self.departments)}..{MAX_PARTIES}")
        return parties

    def layout(
        self, n: int, parties: int | None = None, release: Release | None = None
    ) -> PackingLayout:
        """The packing layout for modulus ``n``; every party and the analyst derive it.
        Under DP each party's values grow by its clipped noise share plus the offset."""
        count = len(self.departments) if parties is None else parties
        offsets = self.offsets(release, count) if release is not None else [0]
        return PackingLayout.for_key(n, self.counters, self.value_bound + 2 * max(offsets), count)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "departments": list(self.departments),
            "params": {p.name: list(p.values) for p in self.params},
            "cells": list(self.cells),
            "value_bound": self.value_bound,
            "record_bound": self.record_bound,
            "count_companion": not self.counts_records,
        }


class StatisticsRegistry:
    """Statistics by name; registering a name twice is an error, never an override."""

    def __init__(self) -> None:
        self._items: dict[str, Statistic] = {}

    def register(self, statistic: Statistic) -> Statistic:
        if statistic.name in self._items:
            raise ValueError(f"statistic {statistic.name!r} is already registered")
        self._items[statistic.name] = statistic
        return statistic

    def get(self, name: object) -> Statistic:
        if not isinstance(name, str):
            raise UnknownStatistic(
                f"statistic: expected a statistic name; GET {STATISTICS_PATH} lists them",
                statistics=STATISTICS_PATH,
            )
        try:
            return self._items[name]
        except KeyError:
            raise UnknownStatistic(
                f"statistic: not a registered statistic; GET {STATISTICS_PATH} lists them",
                statistics=STATISTICS_PATH,
            ) from None

    def for_department(self, department: str) -> list[Statistic]:
        return [s for s in self._items.values() if department in s.departments]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Statistic]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


_YEAR = StatParam("year", YEARS, "Calendar year (of birth, or of payment)")
_DISTRICTS = tuple(DISTRICTS)

REGISTRY = StatisticsRegistry()
REGISTRY.register(
    Statistic(
        name="births_by_district_year",
        title="Births by district of birth and year",
        departments=("health",),
        params=(_YEAR,),
        cells=_DISTRICTS,
        value_bound=10**6,
    )
)
REGISTRY.register(
    Statistic(
        name="allowance_total_by_district_year",
        title="Maternity allowance paid (yuan) by district and payment year",
        departments=("hrss",),
        params=(_YEAR,),
        cells=_DISTRICTS,
        value_bound=10**11,
        counts_records=False,
        record_bound=100_000,
    )
)
