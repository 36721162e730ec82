"""A replay cache in the database, so all gunicorn workers share one memory of spent ids.

:class:`primitives.replay.MemoryReplayCache` is per process: with N workers an assertion
could be replayed up to N-1 times. Here "first use" is the database's own uniqueness check:
an INSERT that hits the primary key means the id was seen. An expired row may be reclaimed
by one conditional UPDATE (atomic on SQLite and PostgreSQL), and expired rows are purged
now and then, so the table stays bounded by (ids per second) x (assertion lifetime).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tongban.primitives.errors import StoreUnavailable

from ._schema import create_schema, make_engine, spent_ids

__all__ = ["SqlReplayCache"]


class SqlReplayCache:
    """Satisfies :class:`primitives.replay.ReplayCache`; fails closed (StoreUnavailable)
    when the database cannot be reached, never "first use"."""

    def __init__(
        self,
        engine: Engine | str,
        *,
        purge_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = make_engine(engine) if isinstance(engine, str) else engine
        self._purge_interval = purge_interval
        self._clock = clock
        self._next_purge = 0.0

    def create_schema(self) -> None:
        create_schema(self.engine)

    def first_use(self, jti: str, expires_at: float) -> bool:
        """Record ``jti`` until ``expires_at``; False if it is already recorded and live."""
        now = self._clock()
        key = hashlib.sha256(jti.encode("utf-8")).hexdigest()
        try:
            if now >= self._next_purge:
                self.purge(now)
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(spent_ids).values(key=key, expires_at=expires_at))
                return True
            except IntegrityError:
                pass
            # Seen before: reusable only if that earlier record has expired. Two workers
            # racing here both run this UPDATE; the row lock lets exactly one match.
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(spent_ids)
                    .where(spent_ids.c.key == key, spent_ids.c.expires_at < now)
                    .values(expires_at=expires_at)
                )
            return result.rowcount == 1
        except SQLAlchemyError as exc:
            raise StoreUnavailable("replay cache is unavailable") from exc

    def purge(self, now: float | None = None) -> int:
        """Delete expired ids; returns how many. Called by :meth:`first_use` periodically."""
        cutoff = self._clock() if now is None else now
        try:
            with self.engine.begin() as conn:
                result = conn.execute(delete(spent_ids).where(spent_ids.c.expires_at < cutoff))
        except SQLAlchemyError as exc:
            raise StoreUnavailable("replay cache is unavailable") from exc
        self._next_purge = cutoff + self._purge_interval
        return result.rowcount
