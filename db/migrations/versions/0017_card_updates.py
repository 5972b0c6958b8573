"""card updates: changes to a produced card's chip as jobs of their own; which
certificates the chip carries; the produced card's chip serial

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

import db.models
from db.models import state_in
from schemas.states import CARD_UPDATE

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_ESCROW_CERT = sa.text("attempt_id IS NULL AND update_id IS NULL AND state IN ('valid', 'hold')")
_UPDATE_CERT = sa.text("update_id IS NOT NULL AND state IN ('valid', 'hold')")
_OLD_ESCROW_CERT = sa.text("attempt_id IS NULL AND state IN ('valid', 'hold')")


@contextmanager
def _quiet() -> Iterator[None]:
    """SQLite's batch mode reflects the tables a rebuilt one refers to; it cannot reflect
    the expression indexes on ``users`` (0015) and says so. They are not rebuilt here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
        yield


def upgrade() -> None:
    op.create_table(
        "card_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("journal", sa.JSON(), nullable=False),
        sa.Column("station_id", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("applied_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(state_in(CARD_UPDATE), name=op.f("ck_card_updates_state")),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_card_updates_credential_id_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_updates")),
    )
    op.create_index(op.f("ix_card_updates_state"), "card_updates", ["state"], unique=False)
    op.create_index(
        op.f("ix_card_updates_credential_id"), "card_updates", ["credential_id"], unique=False
    )
    with _quiet(), op.batch_alter_table("certificates") as batch:
        batch.add_column(
            sa.Column("on_chip", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("update_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_certificates_update_id_card_updates"), "card_updates", ["update_id"], ["id"]
        )
        batch.create_index(op.f("ix_certificates_update_id"), ["update_id"], unique=False)
    # The escrowed key's certificate is the one with neither an attempt nor an update;
    # an update's certificates are unique per update and usage.
    op.drop_index("uq_escrow_cert_per_credential", table_name="certificates")
    op.create_index(
        "uq_escrow_cert_per_credential",
        "certificates",
        ["credential_id", "usage"],
        unique=True,
        sqlite_where=_ESCROW_CERT,
        postgresql_where=_ESCROW_CERT,
    )
    op.create_index(
        "uq_live_cert_per_update",
        "certificates",
        ["update_id", "usage"],
        unique=True,
        sqlite_where=_UPDATE_CERT,
        postgresql_where=_UPDATE_CERT,
    )
    with _quiet(), op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("chip_serial", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f("uq_credentials_chip_serial"), ["chip_serial"])
    # What produced cards carry today: the certificates of their good attempt and the
    # escrowed encryption certificate imported with it; and their chip's serial.
    op.execute(
        "UPDATE certificates SET on_chip = true WHERE attempt_id IN "
        "(SELECT id FROM production_attempts WHERE state = 'succeeded') "
        "AND state IN ('valid', 'hold')"
    )
    op.execute(
        "UPDATE certificates SET on_chip = true WHERE attempt_id IS NULL "
        "AND credential_id IN "
        "(SELECT credential_id FROM production_attempts WHERE state = 'succeeded') "
        "AND state IN ('valid', 'hold')"
    )
    op.execute(
        "UPDATE credentials SET chip_serial = (SELECT MAX(a.chip_serial) FROM "
        "production_attempts a WHERE a.credential_id = credentials.id "
        "AND a.state = 'succeeded')"
    )


def downgrade() -> None:
    op.drop_index("uq_live_cert_per_update", table_name="certificates")
    op.drop_index("uq_escrow_cert_per_credential", table_name="certificates")
    op.create_index(
        "uq_escrow_cert_per_credential",
        "certificates",
        ["credential_id", "usage"],
        unique=True,
        sqlite_where=_OLD_ESCROW_CERT,
        postgresql_where=_OLD_ESCROW_CERT,
    )
    with _quiet(), op.batch_alter_table("credentials") as batch:
        batch.drop_constraint(op.f("uq_credentials_chip_serial"), type_="unique")
        batch.drop_column("chip_serial")
    with _quiet(), op.batch_alter_table("certificates") as batch:
        batch.drop_index(op.f("ix_certificates_update_id"))
        batch.drop_constraint(op.f("fk_certificates_update_id_card_updates"), type_="foreignkey")
        batch.drop_column("update_id")
        batch.drop_column("on_chip")
    op.drop_index(op.f("ix_card_updates_credential_id"), table_name="card_updates")
    op.drop_index(op.f("ix_card_updates_state"), table_name="card_updates")
    op.drop_table("card_updates")
