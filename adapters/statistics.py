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

from phe import PaillierPublicKey
from sqlalchemy import func, select

from federation.paillier import (
    InvalidPublicKey,
    ObfuscatorPool,
    OutOfBounds,
    encrypt_vector,
    key_fingerprint,
    parse_public_key,
)
from federation.statistics import REGISTRY, Statistic, StatisticsRegistry, UnknownStatistic

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
    ) -> None:
        self.store = store
        self.department = store.department.name
        self.registry = registry
        self.queries = {n: q for n, q in queries.items() if q.department == self.department}
        self.pools = pools or PoolCache()

    def statistic(self, name: object) -> tuple[Statistic, LocalQuery]:
        statistic = self.registry.get(name)
        query = self.queries.get(statistic.name)
        if self.department not in statistic.departments or query is None:
            raise UnknownStatistic(f"statistic: {self.department} does not contribute to it")
        return statistic, query

    def vector(
        self, statistic: Statistic, query: LocalQuery, params: Mapping[str, str]
    ) -> list[int]:
        """The department's plaintext vector, from one GROUP BY over its table."""
        year = int(params["year"])
        table = self.store.department.table(query.table)
        date = table.c[query.date_column]
        value = func.sum(table.c[query.amount_column]) if query.amount_column else func.count()
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

    def contribute(
        self, name: object, params: object, key_jwk: object, parties: object
    ) -> tuple[Statistic, dict[str, str], str, list[int]]:
        """Validate everything before touching data; return the encrypted vector."""
        statistic, query = self.statistic(name)
        clean = statistic.check_params(params)
        count = statistic.check_parties(parties)
        if not isinstance(key_jwk, Mapping):
            raise InvalidPublicKey("key: expected a JWK object")
        key = parse_public_key(key_jwk)
        layout = statistic.layout(key.n, count)
        values = self.vector(statistic, query, clean)
        ciphertexts = encrypt_vector(key, values, layout, self.pools.get(key))
        return statistic, clean, key_fingerprint(key), ciphertexts
