"""api tokens; user roles

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_name"), "api_tokens", ["name"], unique=False)
    # A plain ADD COLUMN (a batch rebuild of users would trip the foreign keys).
    op.add_column(
        "users", sa.Column("roles", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("roles")
    op.drop_index(op.f("ix_api_tokens_name"), table_name="api_tokens")
    op.drop_table("api_tokens")
