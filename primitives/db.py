"""SQLAlchemy engines configured the one way every tongban store needs.

File SQLite gets WAL (readers never block the writer) and a busy timeout (several
processes wait for the write lock instead of failing with "database is locked");
in-memory SQLite gets one shared connection (otherwise each pooled connection would see
its own empty database); server databases get pre-ping so a restarted server heals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool

from tongban.primitives.extras import require_extra

from .errors import StoreUnavailable

__all__ = [
    "INCOMPLETE",
    "PG_CONNECT_TIMEOUT",
    "PG_IDLE_IN_TX_MS",
    "is_memory_sqlite",
    "make_engine",
    "scrub_free_space",
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


#: :func:`scrub_free_space`'s answer when another connection kept the SQLite WAL in use.
INCOMPLETE = (
    "VACUUM done, but the write-ahead log is still open elsewhere: "
    "run again with the adapter stopped"
)


def scrub_free_space(engine: Engine, tables: Iterable[str]) -> str:
    """Leave no old bytes of ``tables`` in the database's files after rows were rewritten
    in place (encryption at rest, key rotation); returns what was done, for the report.

    An UPDATE does not overwrite the old row: SQLite moves changed cells and frees pages
    that keep their old content, PostgreSQL leaves dead tuples in the heap and index pages,
    so a raw-byte scan of the files finds the plaintext of an "encrypted" store.

    * SQLite: ``secure_delete`` on, ``VACUUM`` (the file is rewritten page by page, in
      memory, with no temporary file), then ``wal_checkpoint(TRUNCATE)``, so neither the
      database file nor its write-ahead log holds a page from before. If another process
      keeps the checkpoint from completing, the answer is :data:`INCOMPLETE`: run it again
      with the adapter stopped.
    * PostgreSQL: ``VACUUM FULL`` of each table (a new heap and new indexes; the old files are
      unlinked) and a ``CHECKPOINT`` where the role may. The server's WAL segments still hold
      the old pages until they are recycled, and so does any WAL archive or base backup: see
      docs/security.md.
    * MariaDB/MySQL: ``OPTIMIZE TABLE`` (a table rebuild under InnoDB).
    """
    names = list(tables)
    dialect = engine.dialect.name
    if dialect == "sqlite":
        engine.dispose()  # no pooled connection keeps a snapshot the checkpoint waits for
        try:
            return _scrub_sqlite(engine)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StoreUnavailable("the store could not be compacted") from exc
    if dialect not in ("postgresql", "mysql", "mariadb"):
        return f"no free-space scrub for {dialect}"
    # VACUUM cannot run inside a transaction: a connection of its own, in autocommit,
    # closed before this returns (the caller's pool is left as it was).
    own = create_engine(engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    quote = engine.dialect.identifier_preparer.quote
    try:
        with own.connect() as conn:
            if dialect == "postgresql":
                for name in names:
                    conn.exec_driver_sql(f"VACUUM FULL {quote(name)}")
                try:
                    conn.exec_driver_sql("CHECKPOINT")
                except SQLAlchemyError:
                    return f"VACUUM FULL of {len(names)} tables (CHECKPOINT not permitted)"
                return f"VACUUM FULL of {len(names)} tables and a CHECKPOINT"
            for name in names:
                conn.exec_driver_sql(f"OPTIMIZE TABLE {quote(name)}").all()
            return f"OPTIMIZE TABLE of {len(names)} tables"
    except SQLAlchemyError as exc:
        raise StoreUnavailable("the store could not be compacted") from exc
    finally:
        own.dispose()


def _scrub_sqlite(engine: Engine) -> str:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.commit()
        cur.execute("VACUUM")
        busy, _log, _done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        cur.close()
    finally:
        raw.close()
    if busy:
        # A reader elsewhere (a running adapter) still uses the log: its frames are this
        # run's own pages, but old ones may remain until a checkpoint completes.
        return INCOMPLETE
    return "VACUUM with secure_delete, write-ahead log truncated"
