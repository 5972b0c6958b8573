"""every wait has an owner: work needing attention, reminder re-drives, station statuses
that say what a station waits for

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attention",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("wait", sa.String(length=48), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attention")),
    )
    # One open problem per row and wait: a second report of the same one is a no-op.
    op.create_index(
        "uq_attention_open",
        "attention",
        ["entity", "entity_id", "wait"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.add_column(
        "reminders",
        sa.Column("redriven_at", db.models.UTCDateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table("stations") as batch:
        batch.alter_column("status", existing_type=sa.String(length=16), type_=sa.String(length=32))


def downgrade() -> None:
    with op.batch_alter_table("stations") as batch:
        batch.alter_column("status", existing_type=sa.String(length=32), type_=sa.String(length=16))
    op.drop_column("reminders", "redriven_at")
    op.drop_index("uq_attention_open", table_name="attention")
    op.drop_table("attention")
