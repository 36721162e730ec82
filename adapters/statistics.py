"""A department's side of encrypted statistics: one GROUP BY, then packed Paillier.

The adapter computes its local vector (one counter per district, zeros where it holds no
record, plus per-district record counts for statistics with a count companion), refuses any
value above the statistic's bound (the packing's no-overflow guarantee rests on it), and
encrypts the vector under the analyst's key with precomputed obfuscators. Plaintext never
leaves this module.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from phe import PaillierPublicKey
from sqlalchemy import case, func, select

from tongban.federation.paillier import (
    InvalidPublicKey,
    ObfuscatorPool,
    OutOfBounds,
    encrypt_vector,
    key_fingerprint,
    parse_public_key,
)
from tongban.federation.statistics import (
    DEFAULT_THRESHOLD,
    REGISTRY,
    Release,
    Statistic,
    StatisticsRegistry,
    UnknownStatistic,
)

from .store import DepartmentStore

__all__ = ["LOCAL_QUERIES", "LocalQuery", "LocalStatistics", "PoolCache"]


@dataclass(frozen=True, slots=True)
class LocalQuery:
    """How one department computes one statistic from its own tables."""

    department: str
    table: str
    date_column: str  # the year parameter selects rows by this date's calendar year
    amount_column: str | None = None  # summed; None counts rows


LOCAL_QUERIES: dict[str, LocalQuery] = {
    "births_by_district_year": LocalQuery("health", "births", "birth_date"),
    "allowance_total_by_district_year": LocalQuery(
        "hrss", "maternity_allowance_payments", "paid_date", "amount"
    ),
}


class PoolCache:
    """Obfuscator pools by key fingerprint, least recently used evicted (and stopped)."""

    def __init__(self, *, max_keys: int = 4, size: int = 16, workers: int = 2) -> None:
        self.max_keys = max_keys
        self.size = size
        self.workers = workers
        self._pools: OrderedDict[str, ObfuscatorPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: PaillierPublicKey) -> ObfuscatorPool:
        fingerprint = key_fingerprint(key)
        evicted: list[ObfuscatorPool] = []
        with self._lock:
            pool = self._pools.get(fingerprint)
            if pool is None:
                pool = ObfuscatorPool(key, self.size, self.workers)
                self._pools[fingerprint] = pool
                while len(self._pools) > self.max_keys:
                    evicted.append(self._pools.popitem(last=False)[1])
            else:
                self._pools.move_to_end(fingerprint)
        for old in evicted:
            old.close()
        return pool

    def __len__(self) -> int:
        with self._lock:
            return len(self._pools)

    def wait_full(self, timeout: float | None = None) -> bool:
        """Block until every pool is full (benchmarks separate refilling from the online
        phase with it); ``False`` if one is not full in time."""
        with self._lock:
            pools = list(self._pools.values())
        return all(pool.wait_full(timeout) for pool in pools)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()


class LocalStatistics:
    """Validate a statistic request for this department, compute and encrypt its vector."""

    def __init__(
        self,
        store: DepartmentStore,
        *,
        registry: StatisticsRegistry = REGISTRY,
        queries: Mapping[str, LocalQuery] = LOCAL_QUERIES,
        pools: PoolCache | None = None,
        min_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        self.store = store
        #: This department's own floor: a request asking for less suppression gets this.
        self.min_threshold = min_threshold
        self.department = store.department.name
        self.registry = registry
        self.queries = {n: q for n, q in queries.items() if q.department == self.department}
        self.pools = pools if pools is not None else PoolCache()  # an empty cache is falsy

    def statistic(self, name: object) -> tuple[Statistic, LocalQuery]:
        statistic = self.registry.get(name)
        query = self.queries.get(statistic.name)
        if self.department not in statistic.departments or query is None:
            raise UnknownStatistic(f"statistic: {self.department} does not contribute to it")
        return statistic, query

    def vector(
        self,
        statistic: Statistic,
        query: LocalQuery,
        params: Mapping[str, str],
        *,
        clip: bool = False,
    ) -> list[int]:
        """The department's plaintext vector, from one GROUP BY over its table. With
        ``clip`` (under DP) each record adds at most the statistic's ``record_bound``."""
        year = int(params["year"])
        table = self.store.department.table(query.table)
        date = table.c[query.date_column]
        value: Any
        if query.amount_column is None:
            value = func.count()
        else:
            amount = table.c[query.amount_column]
            if clip:
                bound = statistic.record_bound
                amount = case((amount > bound, bound), else_=amount)  # type: ignore[assignment]
            value = func.sum(amount)
        stmt = (
            select(table.c.district, value, func.count())
            .where(date >= dt.date(year, 1, 1), date < dt.date(year + 1, 1, 1))
            .group_by(table.c.district)
        )
        with self.store.reading() as conn:
            rows = conn.execute(stmt).all()
        sums = dict.fromkeys(statistic.cells, 0)
        counts = dict.fromkeys(statistic.cells, 0)
        for district, total, count in rows:
            if district in sums:  # records outside the declared cells are not released
                sums[district] = int(total or 0)
                counts[district] = int(count)
        values = [sums[c] for c in statistic.cells]
        if not statistic.counts_records:
            values += [counts[c] for c in statistic.cells]
        if any(v < 0 or v > statistic.value_bound for v in values):
            raise OutOfBounds(f"{statistic.name}: a local value exceeds the declared bound")
        return values

    def protect(
        self, statistic: Statistic, values: list[int], release: Release, parties: int
    ) -> list[int]:
        """Apply the release rules to the plaintext vector, before encryption.

        Under DP: add this department's clipped noise share plus the offset to every
        counter. Otherwise, as the sole contributor: zero every cell (value and count) with
        fewer than ``threshold`` records, so the analyst cannot see it whatever its client
        does. A zero and a suppressed cell look alike, on purpose.
        """
        k = len(statistic.cells)
        parts = statistic.noise(release, parties)
        if parts:
            noisy: list[int] = []
            for i, part in enumerate(parts):
                share = part.share(k)
                chunk = np.asarray(values[i * k : (i + 1) * k], dtype=np.int64)
                noisy.extend(int(v) for v in chunk + share + part.offset)
            return noisy
        if not statistic.suppressed_by_departments(release):
            return values
        counts = values[:k] if statistic.counts_records else values[k:]
        small = [c < release.threshold for c in counts]
        out = list(values)
        for i, suppressed in enumerate(small):
            if suppressed:
                out[i] = 0
                if not statistic.counts_records:
                    out[k + i] = 0
        return out

    def contribute(
        self,
        name: object,
        params: object,
        key_jwk: object,
        parties: object,
        release: object = None,
    ) -> tuple[Statistic, dict[str, str], str, list[int], Release]:
        """Validate everything before touching data; return the encrypted vector and the
        release rules applied (threshold raised to this department's floor)."""
        statistic, query = self.statistic(name)
        clean = statistic.check_params(params)
        count = statistic.check_parties(parties)
        rules = Release() if release is None else Release.from_json(release)
        rules = Release(max(rules.threshold, self.min_threshold), rules.epsilon)
        if not isinstance(key_jwk, Mapping):
            raise InvalidPublicKey("key: expected a JWK object")
        key = parse_public_key(key_jwk)
        layout = statistic.layout(key.n, count, rules)
        values = self.vector(statistic, query, clean, clip=rules.epsilon is not None)
        protected = self.protect(statistic, values, rules, count)
        ciphertexts = encrypt_vector(key, protected, layout, self.pools.get(key))
        return statistic, clean, key_fingerprint(key), ciphertexts, rules
