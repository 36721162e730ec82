"""The audit store's tables. Append-only by construction: the library has no code path
that updates or deletes an entry (the vault, which holds the only link to a person, can
be erased; entries never). ``audit_meta`` holds facts fixed when the log is created, such
as its origin (the name every checkpoint carries)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, MetaData, String, Table, Text

__all__ = ["checkpoints", "entries", "meta", "metadata", "vault"]

metadata = MetaData()

entries = Table(
    "audit_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("entry", Text, nullable=False),  # canonical JSON, the hashed bytes
    # Copies of entry fields, for officer queries; the entry text stays the evidence.
    Column("kind", String(64), nullable=False),
    Column("time", String(64), nullable=False),
    Column("requester", String(64)),
    Column("claim", String(64)),
    Column("purpose", String(64)),
    Column("subject", String(64)),
    Column("decision", String(64)),
    Column("result", String(64)),
    Index("ix_audit_requester", "requester", "idx"),
    Index("ix_audit_subject", "subject", "idx"),
    Index("ix_audit_kind", "kind", "idx"),
    Index("ix_audit_time", "time"),
)

checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created", String(32), nullable=False),
)

vault = Table(
    "pseudonym_vault",
    metadata,
    Column("pseudonym", String(64), primary_key=True),
    # SM4-GCM under the vault key, with the pseudonym as associated data.
    Column("id_number", LargeBinary, nullable=False),
)

meta = Table(
    "audit_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
