"""Rate limits per requester and per subject: token buckets shared by every gateway worker.

Two limits guard the check pipeline, each a token bucket (``burst`` tokens, refilled at
``per_second``):

- **requester**: one bucket per client id. A single check costs 1, a batch costs its
  number of subjects (capped at the burst, so a full batch is always admissible when the
  bucket is full). It protects the departments and the audit log from one noisy caller.
- **subject**: one bucket per (requester, citizen). A single check costs 1, a batch 1 per
  distinct subject. It stops one requester from watching or probing one citizen with
  repeated questions, without letting that requester use up the citizen's budget with
  everyone else. The key is SHA-256 over the requester and the citizen's keyed audit
  pseudonym (HMAC-SM3): no ID number is ever stored, and the table cannot be reversed
  without the pseudonym key.

Buckets live in the gateway's SQL database (SQLite file or PostgreSQL), so every gunicorn
worker and every gateway host draws from the same buckets. One admission is one short
transaction of conditional upserts (``INSERT ... ON CONFLICT DO UPDATE ... WHERE enough
tokens RETURNING``); if any bucket is short, the transaction rolls back and nothing is
charged. The state is soft: commits skip fsync (SQLite ``synchronous=NORMAL`` under WAL,
PostgreSQL ``synchronous_commit=off``); a crash can forget the last few charges, never
corrupt the table. Full buckets are deleted periodically, so the table holds only callers
active within one refill period.

A refused request raises :class:`~primitives.errors.RateLimited` (429 ``rate-limited``
with ``Retry-After``). It is refused before policy, consent or any department is asked,
and it is *not* audited: nothing about the citizen was read or answered, and writing a
durable entry per refusal would hand a flooding caller the audit log's write capacity.
Refusals are counted in ``tongban_checks_total{outcome="rate_limited"}`` (by claim and
purpose; no metric names the requester).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from tongban.primitives.db import is_memory_sqlite, make_engine
from tongban.primitives.errors import RateLimited, StoreUnavailable

__all__ = [
    "Bucket",
    "BucketStore",
    "CachedRefusals",
    "Charge",
    "MemoryBucketStore",
    "RateLimiter",
    "SqlBucketStore",
    "bucket_table",
    "build_rate_limiter",
    "metadata",
]

metadata = MetaData()


def bucket_table(name: str, meta: MetaData) -> Table:
    """A table of token buckets (the shape :class:`SqlBucketStore` reads and writes). One
    table per family of buckets: :meth:`SqlBucketStore.purge` deletes by idle time, which
    is only right for buckets that all fill up within the store's ``max_full_after``."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError("rate limit table: expected a lower-case SQL identifier")
    return Table(
        name,
        meta,
        # SHA-256 hex of "<limit>\0<requester>[\0<pseudonym>]": fixed width, nothing personal.
        Column("key", String(64), primary_key=True),
        Column("tokens", Float, nullable=False),
        Column("updated", Float, nullable=False, index=True),
    )


_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
buckets = bucket_table("rate_buckets", metadata)

_PURGE_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's shape: ``burst`` tokens at most, ``per_second`` added back."""

    burst: float
    per_second: float

    def __post_init__(self) -> None:
        if not (self.burst >= 1 and self.per_second > 0):
            raise ValueError("rate limit: expected burst >= 1 and per_second > 0")

    @property
    def full_after(self) -> float:
        """Seconds an empty bucket takes to fill up again."""
        return self.burst / self.per_second


@dataclass(frozen=True, slots=True)
class Charge:
    """Take ``cost`` tokens from the bucket ``key`` of shape ``bucket`` (``limit`` names it
    in the refusal: ``requester`` or ``subject``)."""

    limit: str
    key: str
    bucket: Bucket
    cost: float


class BucketStore(Protocol):
    """Where bucket levels live. ``take`` is all-or-nothing over ``charges``."""

    def take(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        """Charge every bucket, or none: None if admitted, else the first short bucket and
        the seconds until it holds enough tokens."""
        ...


def _wait(charge: Charge, tokens: float, updated: float, now: float) -> float:
    level = min(charge.bucket.burst, tokens + max(0.0, now - updated) * charge.bucket.per_second)
    return max(0.0, (charge.cost - level) / charge.bucket.per_second)


class MemoryBucketStore:
    """One process's buckets, thread-safe. For a single-process deployment and tests; a
    multi-worker gateway uses :class:`SqlBucketStore`, or each worker would allow the full
    rate on its own."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        with self._lock:
            new: dict[str, tuple[float, float]] = {}
            for charge in charges:
                tokens, updated = new.get(charge.key) or self._levels.get(
                    charge.key, (charge.bucket.burst, now)
                )
                wait = _wait(charge, tokens, updated, now)
                if wait > 0:
                    return charge, wait
                level = min(
                    charge.bucket.burst,
                    tokens + max(0.0, now - updated) * charge.bucket.per_second,
                )
                new[charge.key] = (level - charge.cost, max(now, updated))
            self._levels.update(new)
            if len(self._levels) > 100_000:  # forget idle buckets (an hour fills any bucket)
                self._levels = {k: v for k, v in self._levels.items() if now - v[1] < 3600}
        return None


_LEVEL = (
    "(CASE WHEN rate_buckets.tokens + (CASE WHEN rate_buckets.updated < :now"
    " THEN :now - rate_buckets.updated ELSE 0.0 END) * :rate < :burst"
    " THEN rate_buckets.tokens + (CASE WHEN rate_buckets.updated < :now"
    " THEN :now - rate_buckets.updated ELSE 0.0 END) * :rate ELSE :burst END)"
)
#: Refill to ``min(burst, tokens + elapsed * rate)``, then take ``cost`` if that leaves
#: enough; a new bucket starts full. ``RETURNING`` yields no row when the WHERE refuses.
#: Constant text: every value is a bound parameter.
_UPSERT = text(
    "INSERT INTO rate_buckets (key, tokens, updated) VALUES (:key, :burst - :cost, :now)"  # noqa: S608
    " ON CONFLICT (key) DO UPDATE SET tokens = " + _LEVEL + " - :cost,"
    " updated = CASE WHEN rate_buckets.updated < :now THEN :now ELSE rate_buckets.updated END"
    " WHERE " + _LEVEL + " >= :cost RETURNING tokens"
)


class SqlBucketStore:
    """Buckets in a SQL table shared by every worker (see the module docstring)."""

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        max_full_after: float = 3600.0,
        table: Table = buckets,
    ) -> None:
        """``table``: another :func:`bucket_table` for a family of buckets of its own
        (the token endpoint's, in the OAuth database)."""
        self.table = table
        self._sql = _UPSERT if table is buckets else text(_UPSERT.text.replace(
            "rate_buckets", table.name))  # fmt: skip
        if isinstance(url_or_engine, str):
            # A separate engine so the relaxed durability applies to this table's commits
            # only (SQLite's synchronous pragma is per connection).
            synchronous = None if is_memory_sqlite(url_or_engine) else "NORMAL"
            self.engine = make_engine(url_or_engine, synchronous=synchronous)
        else:
            self.engine = url_or_engine
        self._dialect = self.engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError("rate limit store: expected SQLite or PostgreSQL")
        self._max_full_after = max_full_after
        self._next_purge = 0.0
        # SQLite has one writer: threads of this process queue here, on a lock that wakes
        # the next one at once, instead of in SQLite's busy handler, which sleeps up to
        # 100 ms a time. PostgreSQL locks rows, so its transactions run concurrently.
        self._serial: AbstractContextManager[Any] = (
            threading.Lock() if self._dialect == "sqlite" else nullcontext()
        )

    def create_schema(self) -> None:
        """The gateway chain's head revision (tongban.migrations), which holds both bucket
        tables, for tests and the demo; a deployment runs ``tongban db upgrade``."""
        from tongban.migrations import GATEWAY, upgrade

        try:
            upgrade(self.engine, GATEWAY)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("rate limit store is unavailable") from exc

    def _upsert(self, conn: Any, charge: Charge, now: float) -> Any:
        """One conditional upsert: the row's tokens after the charge, or ``None`` if the
        bucket is short. Plain SQL, the same on SQLite (>= 3.35) and PostgreSQL: building
        the equivalent SQLAlchemy construct per call cost more CPU than the database."""
        b = charge.bucket
        params = {"key": charge.key, "burst": float(b.burst), "rate": float(b.per_second),
                  "cost": float(charge.cost), "now": float(now)}  # fmt: skip
        return conn.execute(self._sql, params).first()

    def take(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        try:
            if now >= self._next_purge:
                self.purge(now)
            with self._serial, self.engine.connect() as conn, conn.begin() as tx:
                if self._dialect == "postgresql":
                    conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                for charge in charges:
                    if self._upsert(conn, charge, now) is not None:
                        continue
                    table = self.table
                    row = conn.execute(
                        select(table.c.tokens, table.c.updated).where(table.c.key == charge.key)
                    ).one()
                    tx.rollback()  # all or nothing: earlier charges are undone
                    return charge, _wait(charge, row.tokens, row.updated, now)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("rate limit store is unavailable") from exc
        return None

    def purge(self, now: float) -> int:
        """Delete buckets that have had time to fill up: absent means full."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    delete(self.table).where(self.table.c.updated < now - self._max_full_after)
                )
        except SQLAlchemyError as exc:
            raise StoreUnavailable("rate limit store is unavailable") from exc
        self._next_purge = now + _PURGE_INTERVAL
        return result.rowcount


class CachedRefusals:
    """A :class:`BucketStore` in front of another that remembers, in this process, when
    each refused bucket will next have enough tokens, and refuses again without asking the
    shared store until then. Sound for a shared store: other workers can only take tokens,
    never add them, so a bucket the store found short until ``t`` stays short until at
    least ``t``. A flood past its budget then costs a dictionary look-up per request
    instead of a database transaction."""

    def __init__(self, store: BucketStore, *, max_entries: int = 100_000) -> None:
        self.store = store
        self._until: dict[str, tuple[float, float]] = {}  # key -> (until, cost)
        self._max = max_entries
        self._lock = threading.Lock()

    def peek(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        """The refusal :meth:`take` would answer from memory alone, else None (which does
        not mean admitted: only the shared store knows that)."""
        with self._lock:
            for charge in charges:
                memo = self._until.get(charge.key)
                if memo is not None and now < memo[0] and charge.cost >= memo[1]:
                    return charge, memo[0] - now
        return None

    def take(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        remembered = self.peek(charges, now)
        if remembered is not None:
            return remembered
        refused = self.store.take(charges, now)
        if refused is not None:
            charge, wait = refused
            with self._lock:
                if len(self._until) >= self._max:
                    self._until = {k: v for k, v in self._until.items() if v[0] > now}
                if len(self._until) < self._max:
                    self._until[charge.key] = (now + wait, charge.cost)
        return refused


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class RateLimiter:
    """Admits or refuses checks against the requester and subject limits.

    ``pseudonym`` maps an ID number to a keyed pseudonym (the audit log's HMAC-SM3); the
    limiter never sees it leave that function in plaintext. Either limit may be None (off).
    """

    def __init__(
        self,
        store: BucketStore,
        *,
        requester: Bucket | None,
        subject: Bucket | None,
        pseudonym: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.requester = requester
        self.subject = subject
        self._pseudonym = pseudonym
        self._clock = clock

    def charges(self, requester: str, subjects: Iterable[str], cost: int) -> list[Charge]:
        out: list[Charge] = []
        if self.requester is not None:
            out.append(
                Charge(
                    "requester",
                    _key("requester", requester),
                    self.requester,
                    min(float(cost), self.requester.burst),
                )
            )
        if self.subject is not None:
            for subject in dict.fromkeys(subjects):
                key = _key("subject", requester, self._pseudonym(subject))
                out.append(Charge("subject", key, self.subject, 1.0))
        return out

    def admit(self, requester: str, subjects: Iterable[str] = (), *, cost: int = 1) -> None:
        """Charge the requester ``cost`` and each distinct subject 1, or raise
        :class:`RateLimited` (charging nothing) naming the limit and ``Retry-After``."""
        charges = self.charges(requester, subjects, cost)
        if not charges:
            return
        refused = self.store.take(charges, self._clock())
        if refused is None:
            return
        charge, wait = refused
        what = "this requester" if charge.limit == "requester" else "this requester and subject"
        raise RateLimited(
            f"rate limit: too many checks by {what}; retry later",
            retry_after=max(1, math.ceil(wait)),
            limit=charge.limit,
        )


def _bucket(burst: float, per_second: float) -> Bucket | None:
    return Bucket(burst, per_second) if burst > 0 and per_second > 0 else None


def build_rate_limiter(
    url: str,
    *,
    requester_burst: float,
    requester_per_second: float,
    subject_burst: float,
    subject_per_second: float,
    pseudonym: Callable[[str], str],
) -> RateLimiter | None:
    """The SQL-backed limiter on the gateway database ``url`` (its table comes with the
    gateway chain's migrations), or None when both limits are off (a burst or rate of 0)."""
    requester = _bucket(requester_burst, requester_per_second)
    subject = _bucket(subject_burst, subject_per_second)
    if requester is None and subject is None:
        return None
    slowest = max(b.full_after for b in (requester, subject) if b is not None)
    store = SqlBucketStore(url, max_full_after=max(slowest, 1.0))
    return RateLimiter(store, requester=requester, subject=subject, pseudonym=pseudonym)
