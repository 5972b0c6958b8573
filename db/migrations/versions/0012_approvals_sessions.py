"""approval requests (an approval step on every lifecycle process), console sessions,
holders' roles dropped (roles live on principals only), and the changes a batch row
asks for on an existing holder, kept on its card until the request is approved

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models
from db.models import state_in
from schemas.states import APPROVAL_REQUEST

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("process", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(state_in(APPROVAL_REQUEST), name=op.f("ck_approval_requests_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
    )
    op.create_index(
        op.f("ix_approval_requests_state"), "approval_requests", ["state"], unique=False
    )
    op.create_index(
        op.f("ix_approval_requests_requested_by"),
        "approval_requests",
        ["requested_by"],
        unique=False,
    )
    op.create_index(
        "uq_pending_request",
        "approval_requests",
        ["process", "target"],
        unique=True,
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_console_sessions_principal_id_principals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_console_sessions_token_hash")),
    )
    op.create_index(
        op.f("ix_console_sessions_principal_id"),
        "console_sessions",
        ["principal_id"],
        unique=False,
    )
    with op.batch_alter_table("users") as batch:
        batch.drop_column("roles")
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("user_changes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("user_changes")
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("roles", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
    op.drop_index(op.f("ix_console_sessions_principal_id"), table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_index("uq_pending_request", table_name="approval_requests")
    op.drop_index(op.f("ix_approval_requests_requested_by"), table_name="approval_requests")
    op.drop_index(op.f("ix_approval_requests_state"), table_name="approval_requests")
    op.drop_table("approval_requests")
