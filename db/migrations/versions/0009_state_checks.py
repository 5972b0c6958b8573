"""the schema says what may exist: a CHECK on every state column, generated from the
state machines, and one live production attempt per station

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.models import CREDENTIAL_KINDS, state_in, state_in_kind
from schemas.states import MACHINES

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Each stateful table and the machines whose states its ``state`` may hold. The allowed
# values are read from schemas.states, as the models' CHECKs are: a machine that gains a
# state needs a new migration that re-creates its table's CHECK (see
# tests/unit/test_one_way_to_write.py, which keeps the states this one was written for).
STATE_TABLES: dict[str, tuple[str, ...]] = {
    "users": ("user",),
    "batch_orders": ("batch",),
    "credentials": ("card", "temp_card"),
    "production_attempts": ("attempt",),
    "certificates": ("certificate",),
    "soft_tokens": ("soft_token",),
    "incidents": ("incident",),
}

_LIVE = sa.text("state = 'in_progress'")


def upgrade() -> None:
    # On SQLite each table is rebuilt (db.migrate.upgrade turns foreign keys off around
    # it and checks every reference before committing); a row in a state its machine
    # does not know stops the upgrade here, before anything is kept.
    for table, machines in STATE_TABLES.items():
        # Credentials: a card in a card's state, a temporary card in a temporary card's.
        sql = (
            state_in_kind(CREDENTIAL_KINDS)
            if table == "credentials"
            else state_in(*(MACHINES[m] for m in machines))
        )
        with op.batch_alter_table(table) as batch:
            batch.create_check_constraint(op.f(f"ck_{table}_state"), sql)
    _refuse_two_live_attempts_per_station()
    op.create_index(
        "uq_live_attempt_per_station",
        "production_attempts",
        ["station_id"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def _refuse_two_live_attempts_per_station() -> None:
    # The index would refuse them too, but without saying which station or what to do.
    busy = op.get_bind().execute(
        sa.text(
            "SELECT station_id FROM production_attempts WHERE state = 'in_progress' "
            "GROUP BY station_id HAVING COUNT(*) > 1"
        )
    )
    stations = sorted(row[0] for row in busy)
    if stations:
        raise RuntimeError(
            f"stations {', '.join(stations)} have more than one live production attempt: "
            "end all but one of each (succeeded or spoiled), then upgrade again"
        )


def downgrade() -> None:
    op.drop_index("uq_live_attempt_per_station", table_name="production_attempts")
    for table in reversed(STATE_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_state"), type_="check")
