"""The gateway database's first schema: what the stores' ``create_all`` made before there
were migrations (requesters, spent assertion ids, rate buckets, policies, consents,
statistics jobs and privacy budgets, parameter asks, page sessions).

Written out table by table, not taken from the models: a model that changes later needs a
revision of its own (tests/test_migrations.py fails until it has one).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "gateway_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("subject_masked", sa.String(length=18), nullable=False),
        sa.Column("granted_by", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("purposes", sa.Text(), nullable=False),
        sa.Column("claims", sa.Text(), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("artefact", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("uses >= 0 AND uses <= max_uses", name="ck_consents_uses"),
        sa.CheckConstraint("status IN ('ACTIVE', 'REVOKED')", name="ck_consents_status"),
    )
    op.create_index("ix_consents_subject", "consents", ["subject"])
    op.create_index("ix_consents_granted_by", "consents", ["granted_by"])
    op.create_table(
        "gateway_jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gateway_jobs_requester", "gateway_jobs", ["requester"])
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("auth_method", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("assertion_alg", sa.String(length=16), nullable=True),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("client_id"),
    )
    # Token buckets (gateway/ratelimit.py bucket_table): the token endpoint's and the
    # check pipeline's, one table each.
    for name in ("oauth_rate_buckets", "rate_buckets"):
        op.create_table(
            name,
            sa.Column("key", sa.String(length=64), nullable=False),
            sa.Column("tokens", sa.Float(), nullable=False),
            sa.Column("updated", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("key"),
        )
        op.create_index(f"ix_{name}_updated", name, ["updated"])
    op.create_table(
        "oauth_spent_ids",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_oauth_spent_ids_expires_at", "oauth_spent_ids", ["expires_at"])
    op.create_table(
        "page_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("seen", sa.Float(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_page_sessions_expires", "page_sessions", ["expires"])
    op.create_table(
        "param_asks",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", "slot"),
    )
    op.create_index("ix_param_asks_expires", "param_asks", ["expires"])
    op.create_table(
        "policy_changes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("proposer", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("base_version", sa.String(length=64), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("result_version", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "policy_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "policy_legal_bases",
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("basis", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("purpose"),
    )
    values = [f"v{i}" for i in range(6)]  # v0..v5, as Casbin's SQL adapters do
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ptype", sa.String(length=8), nullable=False),
        *(sa.Column(v, sa.String(length=128), server_default="", nullable=False) for v in values),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ptype", *values, name="uq_policy_rules_line"),
    )
    op.create_table(
        "privacy_budgets",
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("spent_micro", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("requester"),
    )
    op.create_table(
        "privacy_spends",
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("epsilon_micro", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("refunded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("job"),
    )
    op.create_index("ix_privacy_spends_requester", "privacy_spends", ["requester"])


def downgrade() -> None:
    for table in (
        "privacy_spends",
        "privacy_budgets",
        "policy_rules",
        "policy_legal_bases",
        "policy_head",
        "policy_changes",
        "param_asks",
        "page_sessions",
        "oauth_spent_ids",
        "rate_buckets",
        "oauth_rate_buckets",
        "oauth_clients",
        "gateway_jobs",
        "consents",
    ):
        op.drop_table(table)  # its indexes go with it
