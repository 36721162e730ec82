"""The audit database's first schema: what ``AuditLog.open`` made with ``create_all``
before there were migrations (entries, checkpoints, the pseudonym vault, the log's meta).

Written out table by table, not taken from audit/schema.py: a model that changes later
needs a revision of its own (tests/test_migrations.py fails until it has one).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "audit_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("time", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=True),
        sa.Column("claim", sa.String(length=64), nullable=True),
        sa.Column("purpose", sa.String(length=64), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("decision", sa.String(length=64), nullable=True),
        sa.Column("result", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("idx"),
    )
    op.create_index("ix_audit_requester", "audit_entries", ["requester", "idx"])
    op.create_index("ix_audit_subject", "audit_entries", ["subject", "idx"])
    op.create_index("ix_audit_kind", "audit_entries", ["kind", "idx"])
    op.create_index("ix_audit_time", "audit_entries", ["time"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("size"),
    )
    op.create_table(
        "pseudonym_vault",
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("id_number", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("pseudonym"),
    )
    op.create_table(
        "audit_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    for table in ("audit_meta", "pseudonym_vault", "audit_checkpoints", "audit_entries"):
        op.drop_table(table)  # its indexes go with it
