"""steering the line: paused lines and stations, batch and card priority, a failed
card's new attempt budget, cancelled batches, and the console's indexes

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

import db.models
from db.models import state_in
from schemas.states import BATCH

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_BEFORE = ("approved", "failed", "importing", "rejected", "requested")


@contextmanager
def _quiet() -> Iterator[None]:
    """SQLite's batch mode cannot reflect the expression indexes on ``users`` and says
    so; they are not rebuilt here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
        yield


def upgrade() -> None:
    op.create_table(
        "line_pauses",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("paused_by", sa.String(length=100), nullable=False),
        sa.Column("paused_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("scope", "name", name=op.f("pk_line_pauses")),
    )
    zero = sa.text("0")
    op.add_column(
        "credentials", sa.Column("attempt_base", sa.Integer(), server_default=zero, nullable=False)
    )
    op.add_column(
        "credentials", sa.Column("priority", sa.Integer(), server_default=zero, nullable=False)
    )
    op.create_index("ix_credentials_line_queue", "credentials", ["state", "line", "priority", "id"])
    op.create_index("ix_credentials_batch_state", "credentials", ["batch_id", "state"])
    op.create_index(
        "ix_production_attempts_station_state",
        "production_attempts",
        ["station_id", "state", "fault"],
    )
    op.create_index("ix_users_lower_last_name", "users", [sa.text("lower(last_name)")])
    # A batch may be cancelled now: its CHECK is made again from schemas.states.
    with _quiet(), op.batch_alter_table("batch_orders") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default=zero, nullable=False))
        batch.drop_constraint(op.f("ck_batch_orders_state"), type_="check")
        batch.create_check_constraint(op.f("ck_batch_orders_state"), state_in(BATCH))


def downgrade() -> None:
    left = op.get_bind().execute(
        sa.text("SELECT COUNT(*) FROM batch_orders WHERE state = 'cancelled'")
    )
    if left.scalar():
        raise RuntimeError("batches are cancelled: delete them before downgrading")
    with _quiet(), op.batch_alter_table("batch_orders") as batch:
        batch.drop_constraint(op.f("ck_batch_orders_state"), type_="check")
        batch.create_check_constraint(
            op.f("ck_batch_orders_state"),
            "state IN (" + ", ".join(f"'{s}'" for s in _BEFORE) + ")",
        )
        batch.drop_column("priority")
    op.drop_index("ix_users_lower_last_name", table_name="users")
    op.drop_index("ix_production_attempts_station_state", table_name="production_attempts")
    op.drop_index("ix_credentials_batch_state", table_name="credentials")
    op.drop_index("ix_credentials_line_queue", table_name="credentials")
    with _quiet(), op.batch_alter_table("credentials") as batch:
        batch.drop_column("priority")
        batch.drop_column("attempt_base")
    op.drop_table("line_pauses")
