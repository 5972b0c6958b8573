"""CPR receipts (every accepted CPR, a request id once for ever) and users.source
(who created a user, so a CPR does not take over another source's user)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cpr_receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity_system", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("issued_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submitted_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_cpr_receipts_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cpr_receipts")),
        sa.UniqueConstraint(
            "identity_system", "request_id", name=op.f("uq_cpr_receipts_identity_system")
        ),
    )
    op.create_index(op.f("ix_cpr_receipts_user_id"), "cpr_receipts", ["user_id"], unique=False)
    # The CPRs kept so far were accepted: their request ids are used. Their issue time
    # was never signed (NULL), nor who submitted them.
    op.execute(
        "INSERT INTO cpr_receipts (identity_system, request_id, user_id, received_at) "
        "SELECT identity_system, request_id, MIN(user_id), MIN(received_at) FROM cprs "
        "GROUP BY identity_system, request_id"
    )
    # Adding a nullable column needs no table rebuild on SQLite.
    op.add_column("users", sa.Column("source", sa.String(length=80), nullable=True))
    _backfill_sources()


def _backfill_sources() -> None:
    """A user a CPR created belongs to that CPR's identity system: its audited creation
    says so ("CPR <request id> of <system>"). Every other user stays NULL (an operator,
    a CSV import: not an identity system's)."""
    conn = op.get_bind()
    created = conn.execute(
        sa.text(
            "SELECT entity_id, reason FROM audit_events WHERE entity = 'user' "
            "AND action = 'create' AND reason LIKE 'CPR % of %'"
        )
    )
    for entity_id, reason in created.all():
        system = reason.rsplit(" of ", 1)[1]
        conn.execute(
            sa.text("UPDATE users SET source = :source WHERE id = :id"),
            {"source": f"cpr:{system}", "id": int(entity_id)},
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("source")
    op.drop_index(op.f("ix_cpr_receipts_user_id"), table_name="cpr_receipts")
    op.drop_table("cpr_receipts")
