"""Conversations (OpenAI's Conversations API, `/v1/conversations`) and their items.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
    )
    op.create_table(
        "conversation_items",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("item", sa.Text, nullable=False),
    )
    op.create_index("ix_conversation_items_conversation_id_id", "conversation_items", ["conversation_id", "id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_conversation_items_conversation_id_id", table_name="conversation_items")
    op.drop_table("conversation_items")
    op.drop_table("conversations")
