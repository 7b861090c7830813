"""Stored chat completions (`POST /v1/chat/completions` with `store: true`), for `GET /v1/chat/completions` and the
rest of OpenAI's stored-completions API.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("messages", sa.Text, nullable=False),
    )
    op.create_index("ix_chat_completions_created_at", "chat_completions", ["created_at"])  # expiry, by age
    op.create_index("ix_chat_completions_key_id_created_at", "chat_completions", ["key_id", "created_at"])  # a key's list, in order
    op.create_table(
        "chat_completion_metadata",
        sa.Column("completion_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_index("ix_chat_completion_metadata_name_value", "chat_completion_metadata", ["name", "value"])


def downgrade() -> None:
    op.drop_index("ix_chat_completion_metadata_name_value", table_name="chat_completion_metadata")
    op.drop_table("chat_completion_metadata")
    op.drop_index("ix_chat_completions_key_id_created_at", table_name="chat_completions")
    op.drop_index("ix_chat_completions_created_at", table_name="chat_completions")
    op.drop_table("chat_completions")
