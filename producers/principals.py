"""Principals: who acts, proved by a token or a password; their roles grant use cases.

- Names are compared as a person reads them: NFKC-normalised and casefolded, so a
  fullwidth ``OPS-A`` (U+FF2F ...) is ``ops-a``; invisible and control characters, letters of more
  than one script (a Cyrillic a, U+0430, among Latin ones) and the prefixes Cardline's own
  actors use are refused.
- Tokens are 32 random bytes shown once and stored as their SHA-256 (nothing to
  brute-force); they expire (``expires_days``) and can be revoked.
- Passwords (for the console's login) are hashed with scrypt (RFC 7914, n=2**15, r=8,
  p=1, a 16-byte salt); after ``MAX_FAILED_LOGINS`` failures in a row the account is
  locked for ``LOCKOUT`` and every attempt meanwhile fails the same way.
- ``bootstrap_admin`` creates (or recovers) the administrator: it needs the store and
  the master key, which only the host's administrator holds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import ApiToken, Principal, utcnow
from db.secrets import Secret
from db.transition import Unversioned, record
from schemas.errors import FourEyesViolation, NotFound, Unauthorized, ValidationFailed
from schemas.permissions import may
from schemas.roles import PrincipalKind, Role

PREFIX = "cl_"
RESERVED_PREFIXES = (
    "policy:",
    "cpr:",
    "station:",
    "worker:",
    "principal:",
    "host:",
    "migration",
)
MAX_FAILED_LOGINS = 5
LOCKOUT = dt.timedelta(minutes=15)
ADMIN_NAME = "admin"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


@dataclass(frozen=True)
class Caller:
    """An authenticated principal: its stable id, its name and the roles it holds."""

    id: int
    name: str
    kind: str
    roles: frozenset[Role]
    token_id: int | None = None

    @property
    def actor(self) -> str:
        """What the audit log and every ``requested_by`` record: the stable id."""
        return f"principal:{self.id}"

    def may(self, use_case: str) -> bool:
        return may(self.roles, use_case)


def normalise_name(raw: str, *, field: str = "name") -> str:
    """The name as it is compared and stored; ValidationFailed naming what is wrong."""
    name = unicodedata.normalize("NFKC", raw).strip().casefold()
    if not 1 <= len(name) <= 100:
        raise ValidationFailed("a name of 1 to 100 characters", field=field)
    for ch in name:
        category = unicodedata.category(ch)
        if category.startswith("C") or category in ("Zl", "Zp"):
            raise ValidationFailed(f"invisible or control character U+{ord(ch):04X}", field=field)
    scripts = {_script(ch) for ch in name if ch.isalpha()}
    if len(scripts) > 1:
        raise ValidationFailed(f"letters of more than one script: {sorted(scripts)}", field=field)
    if name.startswith(RESERVED_PREFIXES):
        raise ValidationFailed(
            f"names starting {name.split(':')[0]}: are Cardline's own", field=field
        )
    return name


def _script(ch: str) -> str:
    return unicodedata.name(ch, "UNKNOWN").split(" ")[0]


def _roles(values: Iterable[str]) -> list[str]:
    roles = []
    for value in values:
        try:
            roles.append(Role(value).value)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValidationFailed(
                f"{value!r} is not a role; one of {known}", field="roles"
            ) from None
    return sorted(set(roles))


def create_principal(
    store: Store,
    name: str,
    *,
    roles: Iterable[str],
    by: str,
    kind: str = PrincipalKind.OPERATOR,
) -> int:
    """A new principal; ValidationFailed when the name (as normalised) is taken."""
    key = normalise_name(name)
    chosen = _roles(roles)
    with store.tx() as s:
        if s.scalar(select(Principal.id).where(Principal.name == key)) is not None:
            raise ValidationFailed(f"a principal named {key!r} exists", field="name")
        row = Principal(
            kind=PrincipalKind(kind).value,
            name=key,
            display_name=name.strip()[:100],
            roles=chosen,
            created_by=by,
        )
        s.add(row)
        s.flush()
        record(
            s,
            Unversioned("principal", row.id, before=None, after="active"),
            "create",
            actor=by,
            reason=f"{row.kind} {key} with roles {', '.join(chosen) or 'none'}",
        )
        return row.id


def ensure_principal(
    store: Store, name: str, *, roles: Iterable[str], by: str, kind: str = PrincipalKind.SERVICE
) -> str:
    """The actor (``principal:<id>``) of principal ``name``, created with ``roles`` if
    it does not exist yet (the demo's own requester and approver; a resumed demo finds
    them again)."""
    key = normalise_name(name)
    with store.read() as s:
        found = s.scalar(select(Principal.id).where(Principal.name == key))
    if found is None:
        found = create_principal(store, name, roles=roles, by=by, kind=kind)
    return f"principal:{found}"


def set_roles(store: Store, principal_id: int, roles: Iterable[str], *, by: str) -> list[str]:
    """Replace the principal's roles (audited); returns them."""
    with store.tx() as s:
        return set_roles_in(s, principal_id, roles, by=by)


def set_roles_in(
    session: Session, principal_id: int, roles: Iterable[str], *, by: str
) -> list[str]:
    """``set_roles`` inside the caller's transaction."""
    chosen = _roles(roles)
    row = _principal(session, principal_id)
    before = sorted(row.roles or [])
    row.roles = chosen
    record(
        session,
        Unversioned("principal", row.id, before="active", after="active"),
        "roles",
        actor=by,
        reason=f"roles {', '.join(before) or 'none'} -> {', '.join(chosen) or 'none'}",
    )
    return chosen


def _principal(s: Session, principal_id: int) -> Principal:
    row = s.get(Principal, principal_id, with_for_update=True)
    if row is None:
        raise NotFound("principal", principal_id)
    return row


def find_principal(store: Store, name_or_id: str) -> int:
    with store.read() as s:
        if name_or_id.isascii() and name_or_id.isdigit():
            row = s.get(Principal, int(name_or_id))
        else:
            row = s.scalars(
                select(Principal).where(Principal.name == normalise_name(name_or_id))
            ).first()
        if row is None:
            raise NotFound("principal", name_or_id)
        return row.id


@dataclass(frozen=True)
class PrincipalView:
    id: int
    name: str
    kind: str
    roles: list[str]
    created_by: str
    created_at: str
    disabled: bool
    live_tokens: int


def list_principals(store: Store) -> list[PrincipalView]:
    with store.read() as s:
        now = utcnow()
        views = []
        for row in s.scalars(select(Principal).order_by(Principal.id)):
            live = s.scalars(
                select(ApiToken.id).where(
                    ApiToken.principal_id == row.id, ApiToken.revoked_at.is_(None)
                )
            ).all()
            tokens = [
                t
                for t in s.scalars(select(ApiToken).where(ApiToken.id.in_(live)))
                if t.expires_at is None or t.expires_at > now
            ]
            views.append(
                PrincipalView(
                    id=row.id,
                    name=row.name,
                    kind=row.kind,
                    roles=sorted(row.roles or []),
                    created_by=row.created_by,
                    created_at=row.created_at.isoformat(timespec="seconds"),
                    disabled=row.disabled_at is not None,
                    live_tokens=len(tokens),
                )
            )
        return views


# --- the four-eyes rule ---------------------------------------------------------------


def _actor_key(actor: str) -> str:
    text = actor.strip()
    if text.startswith("principal:"):
        return text
    # Rows written before principals existed hold typed names: compared as names are.
    return unicodedata.normalize("NFKC", text).casefold()


def same_principal(a: str, b: str) -> bool:
    """Whether two recorded actors are one principal (``principal:<id>`` by id)."""
    return _actor_key(a) == _actor_key(b)


def check_four_eyes(decider: str, requester: str, what: str) -> None:
    """FourEyesViolation when whoever decides ``what`` is whoever requested it, whatever
    roles or tokens they hold."""
    if same_principal(decider, requester):
        raise FourEyesViolation(decider, what)


def audit_refusal(store: Store, caller: Caller, what: str, why: str) -> None:
    """Record in the audit log that ``caller`` was refused ``what`` (nothing else is
    written: the refused operation's own transaction, if any, was rolled back)."""
    with store.tx() as s:
        record(
            s,
            Unversioned("principal", caller.id, before="active", after="active"),
            "refused",
            actor=caller.actor,
            reason=f"{what}: {why}"[:400],
        )


# --- tokens ---------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    store: Store, principal_id: int, *, by: str, expires_days: int | None = 90
) -> tuple[int, Secret]:
    """A new token for the principal, returned once; it expires after ``expires_days``."""
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise ValidationFailed("1 to 3650 days", field="expires_days")
    token = PREFIX + secrets.token_urlsafe(32)
    expires = None if expires_days is None else utcnow() + dt.timedelta(days=expires_days)
    with store.tx() as s:
        principal = _principal(s, principal_id)
        row = ApiToken(
            principal_id=principal.id,
            token_hash=_digest(token),
            created_by=by,
            expires_at=expires,
        )
        s.add(row)
        s.flush()
        record(
            s,
            Unversioned("api_token", row.id, before=None, after="active"),
            "create",
            actor=by,
            reason=f"token for principal {principal.id} ({principal.name})"
            + (f", expires {expires.date().isoformat()}" if expires else ""),
        )
        return row.id, Secret(token)


def authenticate(store: Store, presented: str) -> Caller:
    """The principal whose live token this is; ``Unauthorized`` otherwise."""
    if not presented.startswith(PREFIX):
        raise Unauthorized("not a Cardline token")
    with store.read() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(presented))).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked token")
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise Unauthorized("token expired")
        principal = row.principal
        if principal.disabled_at is not None:
            raise Unauthorized("principal disabled")
        return caller_of(principal, token_id=row.id)


def caller_of(principal: Principal, *, token_id: int | None) -> Caller:
    return Caller(
        id=principal.id,
        name=principal.name,
        kind=principal.kind,
        roles=frozenset(Role(r) for r in principal.roles or []),
        token_id=token_id,
    )


def revoke_token(store: Store, token_id: int, *, by: str) -> None:
    with store.tx() as s:
        row = s.get(ApiToken, token_id, with_for_update=True)
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
            reason=f"token of principal {row.principal_id} revoked",
        )


# --- passwords and the console's login -----------------------------------------------


def hash_password(password: str) -> str:
    if len(password) < 12:
        raise ValidationFailed("at least 12 characters", field="password")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def _check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), **_SCRYPT)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def set_password(store: Store, principal_id: int, password: Secret, *, by: str) -> None:
    hashed = hash_password(password.reveal())
    with store.tx() as s:
        row = _principal(s, principal_id)
        row.password_hash, row.failed_logins, row.locked_until = hashed, 0, None
        record(
            s,
            Unversioned("principal", row.id, before="active", after="active"),
            "password",
            actor=by,
            reason="password set",
        )


def login(store: Store, name: str, password: Secret) -> Caller:
    """The principal, if ``password`` is theirs and the account is not locked out.

    Every failure raises the same ``Unauthorized`` (no telling a wrong name from a wrong
    password); the fifth in a row locks the account for ``LOCKOUT``."""
    failure = Unauthorized("wrong name or password, or the account is locked for now")
    try:
        key = normalise_name(name)
    except ValidationFailed:
        raise failure from None
    now = utcnow()
    with store.tx() as s:
        row = s.scalars(select(Principal).where(Principal.name == key).with_for_update()).first()
        if row is None or row.password_hash is None or row.disabled_at is not None:
            _check_password(password.reveal(), _DUMMY)  # the same time as a real check
            raise failure
        if row.locked_until is not None and row.locked_until > now:
            raise failure
        if not _check_password(password.reveal(), row.password_hash):
            row.failed_logins += 1
            locked = row.failed_logins >= MAX_FAILED_LOGINS
            if locked:
                row.locked_until, row.failed_logins = now + LOCKOUT, 0
            record(
                s,
                Unversioned("principal", row.id, before="active", after="active"),
                "login_failed",
                actor=row.actor,
                reason="locked out for 15 minutes" if locked else "wrong password",
            )
            failed = True
        else:
            row.failed_logins, row.locked_until = 0, None
            failed = False
        caller = caller_of(row, token_id=None)
    if failed:
        raise failure
    return caller


_DUMMY = (
    "scrypt$" + base64.b64encode(b"\0" * 16).decode() + "$" + base64.b64encode(b"\0" * 32).decode()
)


# --- the administrator ----------------------------------------------------------------


def bootstrap_admin(store: Store, *, by: str, expires_days: int = 30) -> tuple[int, Secret]:
    """Create the administrator principal (or, run again, recover access to it) and a
    new token for it; returns (principal id, token). ``by`` says who ran it (the host
    account), for the audit log."""
    with store.read() as s:
        existing = s.scalar(select(Principal.id).where(Principal.name == ADMIN_NAME))
    if existing is None:
        existing = create_principal(store, ADMIN_NAME, roles=[Role.ADMIN], by=by)
    else:
        set_roles(store, existing, sorted({Role.ADMIN.value}), by=by)
    return existing, issue_token(store, existing, by=by, expires_days=expires_days)[1]
