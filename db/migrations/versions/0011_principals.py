"""principals: every action is done by an authenticated principal with a stable id;
tokens belong to principals, roles are stored on principals and nowhere else

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:20:00
"""

from __future__ import annotations

import json
import unicodedata

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
        sa.UniqueConstraint("name", name=op.f("uq_principals_name")),
    )
    bind = op.get_bind()
    # Each name that held tokens becomes one principal holding the union of their roles
    # (tokens of one name were one actor for the four-eyes rule already).
    tokens = bind.execute(sa.text("SELECT id, name, role, created_at FROM api_tokens")).all()
    by_name: dict[str, tuple[str, set[str], object]] = {}
    for _id, name, role, created in tokens:
        key = unicodedata.normalize("NFKC", name).casefold()
        shown, roles, first = by_name.get(key, (name, set(), created))
        roles.add(role)
        by_name[key] = (shown, roles, first)
    principal_ids: dict[str, int] = {}
    for number, (key, (shown, roles, created)) in enumerate(sorted(by_name.items()), start=1):
        bind.execute(
            sa.text(
                "INSERT INTO principals (id, kind, name, display_name, roles, failed_logins,"
                " created_by, created_at) VALUES (:id, 'operator', :name, :shown, :roles, 0,"
                " 'migration 0010', :created)"
            ),
            {
                "id": number,
                "name": key,
                "shown": shown,
                "roles": json.dumps(sorted(roles)),
                "created": created,
            },
        )
        principal_ids[key] = number
    if bind.dialect.name == "postgresql" and principal_ids:
        bind.execute(
            sa.text("SELECT setval('principals_id_seq', (SELECT MAX(id) FROM principals))")
        )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("principal_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("expires_at", db.models.UTCDateTime(timezone=True), nullable=True)
        )
    for token_id, name, _role, _created in tokens:
        key = unicodedata.normalize("NFKC", name).casefold()
        bind.execute(
            sa.text("UPDATE api_tokens SET principal_id = :p WHERE id = :id"),
            {"p": principal_ids[key], "id": token_id},
        )
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("principal_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            op.f("fk_api_tokens_principal_id_principals"), "principals", ["principal_id"], ["id"]
        )
        batch.create_index(op.f("ix_api_tokens_principal_id"), ["principal_id"])
        batch.drop_index(op.f("ix_api_tokens_name"))
        batch.drop_column("name")
        batch.drop_column("role")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "UPDATE api_tokens SET name = (SELECT display_name FROM principals"
            " WHERE principals.id = api_tokens.principal_id), role = 'admin'"
        )
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint(op.f("fk_api_tokens_principal_id_principals"), type_="foreignkey")
        batch.drop_index(op.f("ix_api_tokens_principal_id"))
        batch.drop_column("expires_at")
        batch.drop_column("principal_id")
        batch.alter_column("name", existing_type=sa.String(length=100), nullable=False)
        batch.alter_column("role", existing_type=sa.String(length=16), nullable=False)
        batch.create_index(op.f("ix_api_tokens_name"), ["name"])
    op.drop_table("principals")
