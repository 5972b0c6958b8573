"""batches imported and decided a chunk at a time: the states ``importing`` and
``failed``, and the reason a batch's remaining cards are rejected with

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.models import state_in
from schemas.states import BATCH

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BEFORE = ("approved", "rejected", "requested")


def upgrade() -> None:
    # "No changes to the holder" is SQL NULL from now on, never the JSON value null.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE credentials SET user_changes = NULL WHERE user_changes::text = 'null'")
    else:
        op.execute("UPDATE credentials SET user_changes = NULL WHERE user_changes = 'null'")
    with op.batch_alter_table("batch_orders") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=500), nullable=True))
        batch.drop_constraint(op.f("ck_batch_orders_state"), type_="check")
        batch.create_check_constraint(op.f("ck_batch_orders_state"), state_in(BATCH))


def downgrade() -> None:
    left = op.get_bind().execute(
        sa.text("SELECT COUNT(*) FROM batch_orders WHERE state IN ('importing', 'failed')")
    )
    if left.scalar():
        raise RuntimeError(
            "batches are importing or failed: let the imports finish (or fail and be "
            "settled) and delete the failed ones before downgrading"
        )
    with op.batch_alter_table("batch_orders") as batch:
        batch.drop_constraint(op.f("ck_batch_orders_state"), type_="check")
        batch.create_check_constraint(
            op.f("ck_batch_orders_state"),
            "state IN (" + ", ".join(f"'{s}'" for s in _BEFORE) + ")",
        )
        batch.drop_column("reason")
