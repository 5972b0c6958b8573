"""first schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 08:15:14.705306
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entity", ["entity", "entity_id"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "batch_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=True),
        sa.Column("card_count", sa.Integer(), nullable=False),
        sa.Column("rejected_rows", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_orders")),
        sa.UniqueConstraint("source_sha256", name=op.f("uq_batch_orders_source_sha256")),
    )
    with op.batch_alter_table("batch_orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batch_orders_state"), ["state"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("publish_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_unsent",
            ["id"],
            unique=False,
            sqlite_where=sa.text("sent_at IS NULL"),
            postgresql_where=sa.text("sent_at IS NULL"),
        )

    op.create_table(
        "stations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("line", sa.String(length=32), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_credential_id", sa.Integer(), nullable=True),
        sa.Column("started_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cards_done", sa.Integer(), nullable=False),
        sa.Column("cards_spoiled", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stations")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=False),
        sa.Column("upn", sa.String(length=254), nullable=False),
        sa.Column("organization", sa.String(length=200), nullable=False),
        sa.Column("org_unit", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=100), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("username", sa.String(length=100), nullable=True),
        sa.Column("identifier", sa.String(length=100), nullable=True),
        sa.Column("photo_path", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("external_id", name=op.f("uq_users_external_id")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_state"), ["state"], unique=False)

    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("line", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("card_number", sa.String(length=32), nullable=True),
        sa.Column("valid_from", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("valid_until", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("pin_sealed", sa.Text(), nullable=True),
        sa.Column("puk_sealed", sa.Text(), nullable=True),
        sa.Column("admin_key_sealed", sa.Text(), nullable=True),
        sa.Column("escrow_key_sealed", sa.Text(), nullable=True),
        sa.Column("pin_letter_path", sa.String(length=500), nullable=True),
        sa.Column("faces_path", sa.String(length=500), nullable=True),
        sa.Column("redriven_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batch_orders.id"], name=op.f("fk_credentials_batch_id_batch_orders")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credentials_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
        sa.UniqueConstraint("card_number", name=op.f("uq_credentials_card_number")),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credentials_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_credentials_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_credentials_user_id"), ["user_id"], unique=False)

    op.create_table(
        "production_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.String(length=64), nullable=False),
        sa.Column("station_instance", sa.String(length=64), nullable=False),
        sa.Column("chip_serial", sa.String(length=64), nullable=True),
        sa.Column("fault", sa.String(length=32), nullable=True),
        sa.Column("fault_detail", sa.String(length=500), nullable=True),
        sa.Column("lease_expires_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_production_attempts_credential_id_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_production_attempts")),
        sa.UniqueConstraint(
            "credential_id", "number", name=op.f("uq_production_attempts_credential_id")
        ),
    )
    with op.batch_alter_table("production_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_production_attempts_credential_id"), ["credential_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_production_attempts_lease_expires_at"),
            ["lease_expires_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_production_attempts_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_production_attempts_station_id"), ["station_id"], unique=False
        )
        batch_op.create_index(
            "uq_live_attempt_per_credential",
            ["credential_id"],
            unique=True,
            sqlite_where=sa.text("state = 'in_progress'"),
            postgresql_where=sa.text("state = 'in_progress'"),
        )

    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=True),
        sa.Column("usage", sa.String(length=32), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("not_before", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("not_after", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("revoked_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["production_attempts.id"],
            name=op.f("fk_certificates_attempt_id_production_attempts"),
        ),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_certificates_credential_id_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("attempt_id", "usage", name=op.f("uq_certificates_attempt_id")),
        sa.UniqueConstraint("serial", name=op.f("uq_certificates_serial")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_certificates_attempt_id"), ["attempt_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_certificates_credential_id"), ["credential_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_certificates_state"), ["state"], unique=False)
        batch_op.create_index(
            "uq_escrow_cert_per_credential",
            ["credential_id", "usage"],
            unique=True,
            sqlite_where=sa.text("attempt_id IS NULL AND state IN ('valid', 'hold')"),
            postgresql_where=sa.text("attempt_id IS NULL AND state IN ('valid', 'hold')"),
        )

    # The audit chain starts at a genesis head; appends lock and advance this one row.
    audit_head = sa.table(
        "audit_head",
        sa.column("id", sa.Integer),
        sa.column("seq", sa.Integer),
        sa.column("hash", sa.String),
    )
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_escrow_cert_per_credential",
            sqlite_where=sa.text("attempt_id IS NULL AND state IN ('valid', 'hold')"),
            postgresql_where=sa.text("attempt_id IS NULL AND state IN ('valid', 'hold')"),
        )
        batch_op.drop_index(batch_op.f("ix_certificates_state"))
        batch_op.drop_index(batch_op.f("ix_certificates_credential_id"))
        batch_op.drop_index(batch_op.f("ix_certificates_attempt_id"))

    op.drop_table("certificates")
    with op.batch_alter_table("production_attempts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_live_attempt_per_credential",
            sqlite_where=sa.text("state = 'in_progress'"),
            postgresql_where=sa.text("state = 'in_progress'"),
        )
        batch_op.drop_index(batch_op.f("ix_production_attempts_station_id"))
        batch_op.drop_index(batch_op.f("ix_production_attempts_state"))
        batch_op.drop_index(batch_op.f("ix_production_attempts_lease_expires_at"))
        batch_op.drop_index(batch_op.f("ix_production_attempts_credential_id"))

    op.drop_table("production_attempts")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_user_id"))
        batch_op.drop_index(batch_op.f("ix_credentials_state"))
        batch_op.drop_index(batch_op.f("ix_credentials_batch_id"))

    op.drop_table("credentials")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_state"))

    op.drop_table("users")
    op.drop_table("stations")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unsent",
            sqlite_where=sa.text("sent_at IS NULL"),
            postgresql_where=sa.text("sent_at IS NULL"),
        )

    op.drop_table("outbox")
    with op.batch_alter_table("batch_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_orders_state"))

    op.drop_table("batch_orders")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entity")

    op.drop_table("audit_events")
