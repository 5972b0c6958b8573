"""crl publications

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 09:17:03.482394
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crl_publications",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("this_update", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_update", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_count", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_crl_publications")),
    )


def downgrade() -> None:
    op.drop_table("crl_publications")
