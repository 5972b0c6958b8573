"""soft tokens; certificates of soft tokens; key recovery flag on credentials

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ESCROW_WHERE = "attempt_id IS NULL AND state IN ('valid', 'hold')"


def upgrade() -> None:
    op.create_table(
        "soft_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_type", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=True),
        sa.Column("passphrase_hash", sa.String(length=200), nullable=True),
        sa.Column("passphrase_sealed", sa.Text(), nullable=True),
        sa.Column("p12_sealed", sa.Text(), nullable=True),
        sa.Column("p12_path", sa.String(length=500), nullable=True),
        sa.Column("mailed_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("issued_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("redriven_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_soft_tokens_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soft_tokens")),
    )
    op.create_index(op.f("ix_soft_tokens_state"), "soft_tokens", ["state"], unique=False)
    op.create_index(op.f("ix_soft_tokens_user_id"), "soft_tokens", ["user_id"], unique=False)

    # SQLite rebuilds the table in batch mode and would drop the partial index's WHERE.
    op.drop_index("uq_escrow_cert_per_credential", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.alter_column("credential_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("soft_token_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_certificates_soft_token_id_soft_tokens"),
            "soft_tokens",
            ["soft_token_id"],
            ["id"],
        )
        batch.create_unique_constraint(op.f("uq_certificates_soft_token_id"), ["soft_token_id"])
    op.create_index(
        "uq_escrow_cert_per_credential",
        "certificates",
        ["credential_id", "usage"],
        unique=True,
        sqlite_where=sa.text(_ESCROW_WHERE),
        postgresql_where=sa.text(_ESCROW_WHERE),
    )
    # A plain ADD COLUMN (a batch rebuild of credentials would trip the foreign keys).
    op.add_column(
        "credentials",
        sa.Column("recover_escrow", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("recover_escrow")
    op.drop_index("uq_escrow_cert_per_credential", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_constraint(op.f("uq_certificates_soft_token_id"), type_="unique")
        batch.drop_constraint(op.f("fk_certificates_soft_token_id_soft_tokens"), type_="foreignkey")
        batch.drop_column("soft_token_id")
        batch.alter_column("credential_id", existing_type=sa.Integer(), nullable=False)
    op.create_index(
        "uq_escrow_cert_per_credential",
        "certificates",
        ["credential_id", "usage"],
        unique=True,
        sqlite_where=sa.text(_ESCROW_WHERE),
        postgresql_where=sa.text(_ESCROW_WHERE),
    )
    op.drop_index(op.f("ix_soft_tokens_user_id"), table_name="soft_tokens")
    op.drop_index(op.f("ix_soft_tokens_state"), table_name="soft_tokens")
    op.drop_table("soft_tokens")
