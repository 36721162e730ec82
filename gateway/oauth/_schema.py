"""The OAuth tables and engine set-up, shared by the client registry and the replay cache.

Both live in one database (SQLite file by default, PostgreSQL in production) so that every
gunicorn worker sees the same clients and the same spent assertion ids.
"""

from __future__ import annotations

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
    func,
)
from sqlalchemy.exc import SQLAlchemyError

from tongban.gateway.ratelimit import bucket_table
from tongban.primitives.db import make_engine
from tongban.primitives.errors import StoreUnavailable

__all__ = ["clients", "create_schema", "make_engine", "metadata", "spent_ids", "token_buckets"]

metadata = MetaData()

clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("auth_method", String(32), nullable=False),
    # "hmac-sm3$pepper-id$mac" or "scrypt$n$r$p$salt$hash" (credentials.py): the scheme and
    # its parameters travel with the hash, so they can change row by row.
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

# The token endpoint's throttle (gateway/oauth/throttle.py): buckets per client id and per
# source address, a table of their own so that the check limiter's purge, tuned to its
# own refill times, never deletes them early.
token_buckets = bucket_table("oauth_rate_buckets", metadata)


def create_schema(engine: Engine) -> None:
    """Bring ``engine``'s database to the gateway chain's head revision (tongban.migrations),
    which holds the OAuth tables: for tests and the demo. A deployment runs ``tongban db
    upgrade``; a gateway only checks the revision (tongban.wiring)."""
    from tongban.migrations import GATEWAY, upgrade

    try:
        upgrade(engine, GATEWAY)
    except SQLAlchemyError as exc:
        raise StoreUnavailable("oauth store is unavailable") from exc
