"""The OAuth tables and engine set-up, shared by the client registry and the replay cache.

Both live in one database (SQLite file by default, PostgreSQL in production) so that every
gunicorn worker sees the same clients and the same spent assertion ids.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from primitives.errors import StoreUnavailable

__all__ = ["clients", "create_schema", "make_engine", "metadata", "spent_ids"]

metadata = MetaData()

clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("auth_method", String(32), nullable=False),
    # "scrypt$n$r$p$salt$hash": parameters travel with the hash so they can be raised later.
    Column("secret_hash", String(255), nullable=True),
    Column("assertion_alg", String(16), nullable=True),
    Column("jwks", Text, nullable=True),
    Column("scopes", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

spent_ids = Table(
    "oauth_spent_ids",
    metadata,
    # SHA-256 of the caller's key: fixed width, and no attacker-chosen text in the table.
    Column("key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # Several workers write spent ids to one file: WAL plus a busy timeout makes them wait
    # for each other instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``. In-memory SQLite gets one shared connection (otherwise each
    pooled connection would see its own empty database)."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_schema(engine: Engine) -> None:
    """Create the OAuth tables if absent (idempotent; run once at deployment or start-up)."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except SQLAlchemyError as exc:
        raise StoreUnavailable("oauth store is unavailable") from exc
