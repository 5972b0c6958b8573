"""e-mail uniqueness becomes an option: a plain index on users.email

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 03:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On SQLite the table is rebuilt (db.migrate.upgrade turns foreign keys off around it
    # and checks every reference before committing).
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("uq_users_email"), type_="unique")
        batch.create_index(op.f("ix_users_email"), ["email"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_index(op.f("ix_users_email"))
        batch.create_unique_constraint(op.f("uq_users_email"), ["email"])
