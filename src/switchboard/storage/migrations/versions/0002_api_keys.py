"""API keys (switchboard.tenants).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("usd_per_day", sa.Float, nullable=True),
        sa.Column("usd_per_month", sa.Float, nullable=True),
        sa.Column("quality_floor", sa.Float, nullable=True),
        sa.Column("usd_per_mtok_ceiling", sa.Float, nullable=True),
        sa.Column("on_violation", sa.String(16), nullable=False),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    # Spend per key is rebuilt from the request log at start: (key_id, created_at) keeps that a range scan.
    op.create_index("ix_requests_key_id_created_at", "requests", ["key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_key_id_created_at", table_name="requests")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
