"""one live certificate per attempt and usage (was: one certificate of any state), so a
certificate revoked because it did not fit the chip's key can be replaced on that blank

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:58:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_LIVE = sa.text("attempt_id IS NOT NULL AND state IN ('valid', 'hold')")


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_constraint(op.f("uq_certificates_attempt_id"), type_="unique")
    op.create_index(
        "uq_live_cert_per_attempt",
        "certificates",
        ["attempt_id", "usage"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_live_cert_per_attempt", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.create_unique_constraint(op.f("uq_certificates_attempt_id"), ["attempt_id", "usage"])
