"""Bearer tokens of the HTTP API, by principal name (``cardline token create``).

A token belongs to a principal (``producers.principals``) and grants what that
principal's roles grant. ``create_token(name, role)`` finds the principal of that name
(as normalised) or creates it, adds the role to it, and issues a token; so two tokens
of one name are one principal, and one actor for the four-eyes rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from db.engine import Store
from db.models import ApiToken, Principal
from db.secrets import Secret
from producers.principals import (
    Caller,
    authenticate,
    create_principal,
    issue_token,
    normalise_name,
    revoke_token,
    set_roles,
)
from schemas.errors import ValidationFailed
from schemas.roles import Role

__all__ = [
    "Caller",
    "TokenView",
    "authenticate",
    "create_token",
    "list_tokens",
    "revoke_token",
]


@dataclass(frozen=True)
class TokenView:
    id: int
    principal_id: int
    name: str
    roles: str
    created_by: str
    created_at: str
    expires_at: str | None
    revoked: bool


def create_token(
    store: Store, *, name: str, role: str, by: str, expires_days: int | None = 90
) -> tuple[int, Secret]:
    """A new token for principal ``name`` (created if new), which gets ``role``."""
    try:
        chosen = Role(role)
    except ValueError:
        raise ValidationFailed(f"one of {', '.join(r.value for r in Role)}", field="role") from None
    key = normalise_name(name)
    with store.read() as s:
        row = s.scalars(select(Principal).where(Principal.name == key)).first()
        existing = None if row is None else (row.id, list(row.roles or []))
    if existing is None:
        pid = create_principal(store, name, roles=[chosen], by=by)
    else:
        pid, roles = existing
        if chosen.value not in roles:
            set_roles(store, pid, [*roles, chosen.value], by=by)
    return issue_token(store, pid, by=by, expires_days=expires_days)


def list_tokens(store: Store) -> list[TokenView]:
    with store.read() as s:
        return [
            TokenView(
                id=row.id,
                principal_id=row.principal_id,
                name=row.principal.name,
                roles=", ".join(row.principal.roles or []),
                created_by=row.created_by,
                created_at=row.created_at.isoformat(timespec="seconds"),
                expires_at=None
                if row.expires_at is None
                else row.expires_at.isoformat(timespec="seconds"),
                revoked=row.revoked_at is not None,
            )
            for row in s.scalars(select(ApiToken).order_by(ApiToken.id))
        ]
