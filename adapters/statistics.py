"""A department's side of encrypted statistics: one GROUP BY, then packed Paillier.

The adapter computes its local vector (one counter per district, zeros where it holds no
record, plus per-district record counts for statistics with a count companion), refuses any
value above the statistic's bound (the packing's no-overflow guarantee rests on it), and
encrypts the vector under the analyst's key with precomputed obfuscators. Plaintext never
leaves this module.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from phe import PaillierPublicKey
from sqlalchemy import text

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

from .deptfile import DepartmentFile, DepartmentFileError, FileStatistic, key_line
from .live import LiveSource, StatisticRows, statistic_cells
from .store import DepartmentStore

__all__ = ["Contribution", "LocalStatistics", "PoolCache"]


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


class Contribution:
    """A department's contribution to the registered encrypted statistics, from its
    department file's ``[statistics.NAME]`` GROUP BY (rows ``(cell, value, records)``):
    validation before any SQL, bounds, small-cell suppression or noise, encryption. A
    statistic the file does not declare, or one the department is not a party to, is
    refused as unknown. Subclasses say where the rows come from (:meth:`rows`).

    ``:record_bound`` is the file's ``record_bound`` under differential privacy (each
    record then adds at most that: the sensitivity the noise is scaled to, never more
    than the registered statistic's own bound) and the statistic's whole value bound
    otherwise, so nothing is clipped.
    """

    def __init__(
        self,
        file: DepartmentFile,
        *,
        registry: StatisticsRegistry = REGISTRY,
        pools: PoolCache | None = None,
        min_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        self.file = file
        self.department = file.name
        self.registry = registry
        #: This department's own floor: a request asking for less suppression gets this.
        self.min_threshold = min_threshold
        self.pools = pools if pools is not None else PoolCache()  # an empty cache is falsy
        for name, declared in file.statistics.items():
            try:
                statistic = registry.get(name)
            except UnknownStatistic:
                continue  # declared for the department's own use: never requested
            if declared.record_bound > statistic.record_bound:
                raise self._refuse(
                    ("statistics", name, "record_bound"),
                    f"at most {statistic.record_bound}, the bound {name} is registered with",
                )

    def _refuse(self, key: tuple[str, ...], what: str) -> DepartmentFileError:
        path = self.file.path
        text_ = path.read_text(encoding="utf-8") if path is not None else ""
        name = str(path) if path is not None else self.file.name
        return DepartmentFileError(name, key_line(text_, key), ".".join(key), what)

    def statistic(self, name: object) -> tuple[Statistic, FileStatistic]:
        statistic = self.registry.get(name)
        declared = self.file.statistics.get(statistic.name)
        if self.department not in statistic.departments or declared is None:
            raise UnknownStatistic(f"statistic: {self.department} does not contribute to it")
        return statistic, declared

    def rows(self, declared: FileStatistic, params: Mapping[str, str], bound: int) -> StatisticRows:
        """The statistic's rows with ``:record_bound`` bound to ``bound``."""
        raise NotImplementedError

    def vector(
        self,
        statistic: Statistic,
        declared: FileStatistic,
        params: Mapping[str, str],
        *,
        clip: bool = False,
    ) -> list[int]:
        """The plaintext vector: one value per declared cell (zero where the query has no
        row; rows of other cells are not released), then the record counts for a
        statistic with a count companion. With ``clip`` (under DP) each record adds at
        most the file's ``record_bound``."""
        bound = declared.record_bound if clip else statistic.value_bound
        sums = dict.fromkeys(statistic.cells, 0)
        counts = dict.fromkeys(statistic.cells, 0)
        for cell, value, records in self.rows(declared, params, bound):
            if cell in sums:
                sums[cell] += value
                counts[cell] += records
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
        statistic, declared = self.statistic(name)
        clean = statistic.check_params(params)
        declared.check_params(clean)  # the file may enumerate fewer values
        count = statistic.check_parties(parties)
        rules = Release() if release is None else Release.from_json(release)
        rules = Release(max(rules.threshold, self.min_threshold), rules.epsilon)
        if not isinstance(key_jwk, Mapping):
            raise InvalidPublicKey("key: expected a JWK object")
        key = parse_public_key(key_jwk)
        layout = statistic.layout(key.n, count, rules)
        values = self.vector(statistic, declared, clean, clip=rules.epsilon is not None)
        protected = self.protect(statistic, values, rules, count)
        ciphertexts = encrypt_vector(key, protected, layout, self.pools.get(key))
        return statistic, clean, key_fingerprint(key), ciphertexts, rules


class LocalStatistics(Contribution):
    """A managed store's contribution: its file's queries, run on the store."""

    def __init__(
        self,
        store: DepartmentStore,
        *,
        registry: StatisticsRegistry = REGISTRY,
        pools: PoolCache | None = None,
        min_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__(
            store.department.file, registry=registry, pools=pools, min_threshold=min_threshold
        )
        self.store = store

    def rows(self, declared: FileStatistic, params: Mapping[str, str], bound: int) -> StatisticRows:
        values = LiveSource.binds(self.store.as_of(), declared.dates, params) | dict(params)
        values["record_bound"] = bound
        with self.store.reading() as conn:
            result = conn.execute(text(declared.sql), values)
            width, rows = len(result.keys()), result.fetchall()
        cells, defect = statistic_cells(width, rows)
        if defect is not None:
            raise OutOfBounds(f"{declared.name}: {defect}")
        return cells
