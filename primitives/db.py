"""SQLAlchemy engines configured the one way every tongban store needs.

File SQLite gets WAL (readers never block the writer) and a busy timeout (several
processes wait for the write lock instead of failing with "database is locked");
in-memory SQLite gets one shared connection (otherwise each pooled connection would see
its own empty database); server databases get pre-ping so a restarted server heals.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from tongban.primitives.extras import require_extra

from .errors import StoreUnavailable

__all__ = [
    "PG_CONNECT_TIMEOUT",
    "PG_IDLE_IN_TX_MS",
    "is_memory_sqlite",
    "make_engine",
    "transaction",
]


def is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


#: Seconds a new PostgreSQL connection may take before it fails (libpq ``connect_timeout``):
#: a server that hangs, or a network that drops packets, becomes a 503 instead of a request
#: thread waiting for TCP to give up.
PG_CONNECT_TIMEOUT = 5

#: Milliseconds a PostgreSQL session may sit idle inside a transaction before the server
#: ends it and releases its locks. No tongban transaction waits on anything but the database.
PG_IDLE_IN_TX_MS = 30_000


def make_engine(url: str, *, synchronous: str | None = None, busy_ms: int = 5000) -> Engine:
    """``synchronous``: SQLite's PRAGMA synchronous for file databases (``FULL`` where a
    commit must survive power loss, e.g. the audit log); ``None`` keeps SQLite's default."""
    if is_memory_sqlite(url):
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    if make_url(url).get_backend_name() == "postgresql":
        if make_url(url).get_driver_name() == "psycopg":
            require_extra("psycopg", "postgres", "a PostgreSQL store (postgresql+psycopg://)")
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT,
                # A session whose client vanished mid-transaction (a network cut, a killed
                # worker) must not keep its locks on the audit table for ever.
                "options": f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TX_MS}",
            },
        )
    engine = create_engine(url, pool_pre_ping=make_url(url).get_backend_name() != "sqlite")
    if engine.dialect.name == "sqlite":

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            if synchronous is not None:
                cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            cur.close()

        event.listen(engine, "connect", pragmas)
    return engine


@contextmanager
def transaction(engine: Engine, store: str) -> Iterator[Connection]:
    """``engine.begin()``, with any database error raised as a 503 ``StoreUnavailable``
    ("``<store>`` is unavailable"): what every store's writes and reads go through."""
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"{store} is unavailable") from exc
