"""Principals for tests that drive the CLI: a token for a named principal holding given
roles, created in the store on first use (the CLI then acts as it, via CARDLINE_TOKEN)."""

from __future__ import annotations

from collections.abc import Iterable

from db.engine import Store
from producers import principals
from schemas.errors import NotFound


def token_for(store: Store, name: str, roles: Iterable[str]) -> str:
    """A fresh token of principal ``name``, which holds at least ``roles``."""
    wanted = sorted({str(r) for r in roles})
    try:
        pid = principals.find_principal(store, name)
    except NotFound:
        pid = principals.create_principal(store, name, roles=wanted, by="host:tests")
    else:
        held = next(v.roles for v in principals.list_principals(store) if v.id == pid)
        if not set(wanted) <= set(held):
            principals.set_roles(store, pid, sorted(set(held) | set(wanted)), by="host:tests")
    return principals.issue_token(store, pid, by="host:tests", expires_days=1)[1].reveal()
