"""indexes on lower(email) and lower(upn): holders are matched whatever the case

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 14:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_users_lower_email", "users", [sa.text("lower(email)")])
    op.create_index("ix_users_lower_upn", "users", [sa.text("lower(upn)")])


def downgrade() -> None:
    op.drop_index("ix_users_lower_upn", table_name="users")
    op.drop_index("ix_users_lower_email", table_name="users")
