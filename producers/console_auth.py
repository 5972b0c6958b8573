"""Console sessions: what a console login hands out and what each request proves.

- A login (``producers.principals.login``) starts a session: a session token for the
  cookie and a CSRF token for the console's own header, 32 random bytes each, shown
  once and stored only as their SHA-256.
- A session ends ``LIFETIME`` after it started, ``IDLE`` after it was last used, at
  logout, or as soon as its principal is disabled.
- Use is noted (``last_seen_at``) at most once per ``REFRESH``, so reading pages does
  not write on every request; that note is not audited, starting and ending are.
- A request that changes something must present the session's CSRF token as well: a
  browser sends the cookie on its own, never the token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import ConsoleSession, utcnow
from db.secrets import Secret
from db.transition import Unversioned, record
from producers.principals import Caller, caller_of
from schemas.errors import Forbidden, PermanentError, Unauthorized

LIFETIME = dt.timedelta(hours=8)
IDLE = dt.timedelta(minutes=30)
REFRESH = dt.timedelta(minutes=1)


class CsrfRefused(Forbidden):
    """A console request that changes something came without its session's CSRF token
    (or with another one); nothing was done."""

    def __init__(self, who: str) -> None:
        self.who, self.action, self.roles = who, "change anything without the CSRF token", ()
        # Forbidden's own message names missing roles; this refusal is not about roles.
        PermanentError.__init__(
            self, f"{who}: send the X-CSRF-Token header the console login returned"
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(store: Store, caller: Caller) -> tuple[Secret, Secret]:
    """A new session for a principal who just logged in: (session token, CSRF token),
    each returned only here."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()
    with store.tx() as s:
        row = ConsoleSession(
            principal_id=caller.id,
            token_hash=_digest(token),
            csrf_hash=_digest(csrf),
            created_at=now,
            last_seen_at=now,
            expires_at=now + LIFETIME,
        )
        s.add(row)
        s.flush()
        record(
            s,
            Unversioned("console_session", row.id, before=None, after="active"),
            "login",
            actor=caller.actor,
            reason=f"console login of principal {caller.id} ({caller.name})",
        )
    return Secret(token), Secret(csrf)


def _live(s: Session, cookie_value: str, now: dt.datetime) -> ConsoleSession:
    """The session this cookie belongs to, if it may still be used; Unauthorized
    otherwise."""
    row = s.scalars(
        select(ConsoleSession).where(ConsoleSession.token_hash == _digest(cookie_value))
    ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("unknown or ended console session: log in again")
    if row.expires_at <= now:
        raise Unauthorized("console session expired: log in again")
    if row.last_seen_at + IDLE <= now:
        raise Unauthorized("console session idle too long: log in again")
    if row.principal.disabled_at is not None:
        raise Unauthorized("principal disabled")
    return row


def session_caller(store: Store, cookie_value: str) -> Caller:
    """The principal whose live session this cookie is; ``Unauthorized`` otherwise."""
    now = utcnow()
    with store.read() as s:
        row = _live(s, cookie_value, now)
        caller, session_id = caller_of(row.principal, token_id=None), row.id
        stale = row.last_seen_at + REFRESH <= now
    if stale:
        # A heartbeat, not an audited change: it only keeps the idle timeout away.
        with store.tx(audited=False) as s:
            s.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == session_id, ConsoleSession.last_seen_at < now)
                .values(last_seen_at=now)
            )
    return caller


def check_csrf(store: Store, cookie_value: str, presented: str | None) -> None:
    """Nothing if ``presented`` is the CSRF token of this cookie's live session;
    ``Unauthorized`` for a dead session, ``CsrfRefused`` (403) for a missing or other
    token."""
    with store.read() as s:
        row = _live(s, cookie_value, utcnow())
        expected, who = row.csrf_hash, row.principal.name
    if presented is None or not hmac.compare_digest(_digest(presented), expected):
        raise CsrfRefused(who)


def end_session(store: Store, cookie_value: str, *, by: str) -> None:
    """End the cookie's session (logout); nothing to do if it has ended already."""
    with store.tx() as s:
        row = s.scalars(
            select(ConsoleSession)
            .where(ConsoleSession.token_hash == _digest(cookie_value))
            .with_for_update()
        ).first()
        if row is None or row.revoked_at is not None:
            return
        row.revoked_at = utcnow()
        record(
            s,
            Unversioned("console_session", row.id, before="active", after="ended"),
            "logout",
            actor=by,
            reason=f"console session of principal {row.principal_id} ended",
        )
