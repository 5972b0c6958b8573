"""indexes for the alerts: cards by state and last change, attempts by finish time

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 19:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_credentials_state_updated_at", "credentials", ["state", "updated_at"])
    op.create_index("ix_production_attempts_finished_at", "production_attempts", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_production_attempts_finished_at", table_name="production_attempts")
    op.drop_index("ix_credentials_state_updated_at", table_name="credentials")
