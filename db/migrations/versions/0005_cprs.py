"""card production requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 02:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cprs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("identity_system", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("received_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replaced", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_cprs_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cprs")),
        sa.UniqueConstraint("user_id", name=op.f("uq_cprs_user_id")),
    )


def downgrade() -> None:
    op.drop_table("cprs")
