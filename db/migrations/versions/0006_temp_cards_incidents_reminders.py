"""temporary card assignment, re-certification, PIN letters by mail, device incidents,
expiry reminders

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 02:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs (a batch rebuild of credentials would trip the foreign keys).
    op.add_column(
        "credentials",
        sa.Column("assigned_until", db.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "credentials",
        sa.Column("recertify_requested_at", db.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "credentials",
        sa.Column("pin_letter_mailed_at", db.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("temporary", sa.Boolean(), nullable=False),
        sa.Column("replacement_id", sa.Integer(), nullable=True),
        sa.Column("declared_by", sa.String(length=100), nullable=False),
        sa.Column("note", sa.String(length=400), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_incidents_credential_id_credentials"),
        ),
        sa.ForeignKeyConstraint(
            ["replacement_id"],
            ["credentials.id"],
            name=op.f("fk_incidents_replacement_id_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_credential_id"), "incidents", ["credential_id"])
    op.create_index(op.f("ix_incidents_state"), "incidents", ["state"])
    op.create_table(
        "reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("sent_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminders")),
        sa.UniqueConstraint(
            "entity", "entity_id", "kind", "period", name=op.f("uq_reminders_entity")
        ),
    )


def downgrade() -> None:
    op.drop_table("reminders")
    op.drop_index(op.f("ix_incidents_state"), table_name="incidents")
    op.drop_index(op.f("ix_incidents_credential_id"), table_name="incidents")
    op.drop_table("incidents")
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("pin_letter_mailed_at")
        batch.drop_column("recertify_requested_at")
        batch.drop_column("assigned_until")
