"""Bearer tokens of the HTTP API: created with a role, shown once, stored as SHA-256.

A token is 32 random bytes (URL-safe base64 with a ``cl_`` prefix), so a plain SHA-256
is a safe way to store it: there is nothing to brute-force. ``authenticate`` looks a
presented token up by its digest; a revoked or unknown token is ``Unauthorized``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from db.engine import Store
from db.models import ApiToken, utcnow
from db.secrets import Secret
from db.transition import Unversioned, record
from schemas.errors import NotFound, Unauthorized, ValidationFailed
from schemas.roles import Role

PREFIX = "cl_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the actor in the audit log) and its role."""

    name: str
    role: Role
    token_id: int


@dataclass(frozen=True)
class TokenView:
    id: int
    name: str
    role: str
    created_by: str
    created_at: str
    revoked: bool


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, *, name: str, role: str, by: str) -> tuple[int, Secret]:
    """A new token for ``name`` with ``role``; the token itself is returned once."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("a name of 1 to 100 characters", field="name")
    try:
        chosen = Role(role)
    except ValueError:
        raise ValidationFailed(f"one of {', '.join(r.value for r in Role)}", field="role") from None
    token = PREFIX + secrets.token_urlsafe(32)
    with store.tx() as s:
        row = ApiToken(name=name, role=chosen.value, token_hash=_digest(token), created_by=by)
        s.add(row)
        s.flush()
        record(
            s,
            Unversioned("api_token", row.id, before=None, after="active"),
            "create",
            actor=by,
            reason=f"token for {name} with role {chosen.value}",
        )
        return row.id, Secret(token)


def authenticate(store: Store, presented: str) -> Principal:
    if not presented.startswith(PREFIX):
        raise Unauthorized("not a Cardline token")
    with store.read() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(presented))).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked token")
        return Principal(name=row.name, role=Role(row.role), token_id=row.id)


def revoke_token(store: Store, token_id: int, *, by: str) -> None:
    with store.tx() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound("token", token_id)
        if row.revoked_at is not None:
            return
        row.revoked_at = utcnow()
        record(
            s,
            Unversioned("api_token", row.id, before="active", after="revoked"),
            "revoke",
            actor=by,
            reason=f"token of {row.name} ({row.role}) revoked",
        )


def list_tokens(store: Store) -> list[TokenView]:
    with store.read() as s:
        return [
            TokenView(
                id=row.id,
                name=row.name,
                role=row.role,
                created_by=row.created_by,
                created_at=row.created_at.isoformat(timespec="seconds"),
                revoked=row.revoked_at is not None,
            )
            for row in s.scalars(select(ApiToken).order_by(ApiToken.id))
        ]
