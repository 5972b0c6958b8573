"""The scheduled expiry check: remind holders of what is about to expire or has expired.

``check_expiry`` finds cards (by ``valid_until``), assigned temporary cards (by
``assigned_until``) and certificates of cards and soft tokens (by ``not_after``) that
are still in use and whose date falls within ``warn_days``. For each it writes a
``Reminder`` and a ``SendReminder`` message in one transaction; the ``notify`` worker
mails it. Cards and valid certificates past their date move to ``expired`` (when
``expire_states``), audited, in the same transaction; a temporary card past its
assignment has no ``expire`` edge: it is reported and reminded, and the certificates
issued to its holder are revoked (an assignment that ends without a withdrawal must not
leave the holder's certificates in force; the card itself is wiped when it is handed
back and withdrawn).

How often: ``expiring`` reminders once per item and period (a day or an ISO week);
``expired`` ones once per card or certificate, since it will not come back, but once
per period for a temporary card, which has to be handed back. Whom: the holder, while
the holder is active or inactive and has an e-mail address; a certificate's holder
only while the card or soft token it belongs to is in use (a certificate on a card
that expired in the same check is covered by the card's reminder).

Each chunk of items is one audited transaction: it takes the audit head lock first, so
two checks running at once serialise, and the second sees the first one's reminders
before it decides (the unique key on reminders is the backstop).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import outbox, production
from db.engine import Store, retry_transient
from db.models import Certificate, Credential, Reminder, SoftToken, Stateful, User, utcnow
from db.transition import transition
from schemas.errors import ConflictError
from schemas.expiry import (
    EXPIRED_STATES,
    REMINDED_STATES,
    ExpiryConfig,
    ReminderEntity,
    ReminderKind,
)
from schemas.messages import SendReminder
from schemas.states import CertState, CredentialKind, SoftTokenState, UserState

log = structlog.get_logger(__name__)

ACTOR = "scheduler:expiry"
CHUNK = 100
# An unsent reminder of the current period older than this lost its message (a broker
# restart, a mailer not configured yet): it is published again.
REDRIVE_AFTER = dt.timedelta(minutes=10)
_HOLDER_STATES = frozenset({UserState.ACTIVE, UserState.INACTIVE})

E, K = ReminderEntity, ReminderKind


def _counts() -> dict[str, dict[str, int]]:
    return {e.value: {k.value: 0 for k in K} for e in E}


@dataclass
class ExpiryReport:
    """What one check found and did; counts only what its transactions committed."""

    period: str
    # Items in use that are expiring or expired, by entity and kind, when the check began.
    found: dict[str, dict[str, int]] = field(default_factory=_counts)
    # Reminders this check queued (new ones only), by entity and kind.
    reminded: dict[str, dict[str, int]] = field(default_factory=_counts)
    # Items this check moved to ``expired``, by entity.
    expired: dict[str, int] = field(default_factory=lambda: {e.value: 0 for e in E})
    # Items nobody is reminded of: no holder, no e-mail, or holder or card out of use.
    no_recipient: int = 0
    # Unsent reminders of this period published again.
    redriven: int = 0
    # Assigned temporary cards past their assignment (reported, never moved): numbers.
    overdue_temp_cards: list[str] = field(default_factory=list)
    # Certificates of those cards' holders revoked because the assignment ended.
    revoked_at_assignment_end: int = 0

    def merge(self, other: ExpiryReport) -> None:
        for entity in E:
            for kind in K:
                self.reminded[entity][kind] += other.reminded[entity][kind]
            self.expired[entity] += other.expired[entity]
        self.no_recipient += other.no_recipient
        self.redriven += other.redriven
        self.overdue_temp_cards += other.overdue_temp_cards
        self.revoked_at_assignment_end += other.revoked_at_assignment_end

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "found": self.found,
            "reminded": self.reminded,
            "expired": self.expired,
            "no_recipient": self.no_recipient,
            "redriven": self.redriven,
            "overdue_temp_cards": self.overdue_temp_cards,
            "revoked_at_assignment_end": self.revoked_at_assignment_end,
        }


@dataclass(frozen=True)
class _Item:
    """One card, temporary card or certificate as it is inside the transaction."""

    entity: ReminderEntity
    row: Stateful
    until: dt.datetime | None
    holder: User | None  # None: nobody to remind (or the card it sits on is out of use)


def _windows() -> list[tuple[ReminderEntity, Any, Any, list[ColumnElement[bool]]]]:
    """Per entity: its id column, its date column and what keeps it in use."""
    return [
        (
            E.CARD,
            Credential.id,
            Credential.valid_until,
            [
                Credential.kind == CredentialKind.CARD,
                Credential.state.in_(REMINDED_STATES[E.CARD]),
            ],
        ),
        (
            E.TEMP_CARD,
            Credential.id,
            Credential.assigned_until,
            [
                Credential.kind == CredentialKind.TEMP_CARD,
                Credential.state.in_(REMINDED_STATES[E.TEMP_CARD]),
            ],
        ),
        (
            E.CERTIFICATE,
            Certificate.id,
            Certificate.not_after,
            [Certificate.state.in_(REMINDED_STATES[E.CERTIFICATE])],
        ),
    ]


def _unsettled(
    entity: ReminderEntity, id_col: Any, until: Any, now: dt.datetime, period: str
) -> ColumnElement[bool]:
    """Past its date, or not yet reminded that it is expiring this period."""
    reminded = exists().where(
        Reminder.entity == entity,
        Reminder.entity_id == id_col,
        Reminder.kind == K.EXPIRING,
        Reminder.period == period,
    )
    return or_(until <= now, ~reminded)


def _scan(
    session: Session, report: ExpiryReport, *, now: dt.datetime, horizon: dt.datetime
) -> list[tuple[ReminderEntity, int]]:
    """Count every item in use whose date is before ``horizon`` into ``report.found``;
    return those that need a look: past their date (they may have to move to expired)
    or not yet reminded this period. Each is checked again in its chunk."""
    todo: list[tuple[ReminderEntity, int]] = []
    for entity, id_col, until, in_use in _windows():
        where = [*in_use, until <= horizon]
        for kind, when in ((K.EXPIRED, until <= now), (K.EXPIRING, until > now)):
            count = select(func.count()).select_from(id_col.table).where(*where, when)
            report.found[entity][kind] = session.scalar(count) or 0
        stmt = select(id_col).where(*where, _unsettled(entity, id_col, until, now, report.period))
        todo += [(entity, i) for i in session.scalars(stmt.order_by(id_col))]
    return todo


def _credential_item(entity: ReminderEntity, cred: Credential) -> _Item:
    until = cred.assigned_until if entity is E.TEMP_CARD else cred.valid_until
    return _Item(entity, cred, until, cred.user)


def _certificate_item(session: Session, cert: Certificate) -> _Item:
    holder: User | None = None
    if cert.credential_id is not None:
        cred = session.get(Credential, cert.credential_id)
        on = E.TEMP_CARD if cred and cred.kind == CredentialKind.TEMP_CARD else E.CARD
        if cred is not None and cred.state in REMINDED_STATES[on]:
            holder = cred.user
    elif cert.soft_token_id is not None:
        token = session.get(SoftToken, cert.soft_token_id)
        if token is not None and token.state == SoftTokenState.ISSUED:
            holder = token.user
    return _Item(E.CERTIFICATE, cert, cert.not_after, holder)


def _load(session: Session, entity: ReminderEntity, row_id: int) -> _Item | None:
    if entity is E.CERTIFICATE:
        cert = session.get(Certificate, row_id)
        return None if cert is None else _certificate_item(session, cert)
    cred = session.get(Credential, row_id)
    return None if cred is None else _credential_item(entity, cred)


def _recipient(holder: User | None) -> str | None:
    if holder is None or holder.state not in _HOLDER_STATES:
        return None
    email = (holder.email or "").strip()
    return email if "@" in email else None


def _already_reminded(session: Session, item: _Item, kind: ReminderKind, period: str) -> bool:
    stmt = select(Reminder.id).where(
        Reminder.entity == item.entity, Reminder.entity_id == item.row.id, Reminder.kind == kind
    )
    # A card or certificate that expired is reminded once, whatever the period.
    if kind is K.EXPIRING or item.entity is E.TEMP_CARD:
        stmt = stmt.where(Reminder.period == period)
    return bool(session.scalar(select(exists(stmt))))


def _expire(session: Session, item: _Item, config: ExpiryConfig) -> bool:
    if not config.expire_states or item.entity not in EXPIRED_STATES:
        return False
    if item.row.state not in item.row.machine.edge("expire").sources:
        return False  # a certificate on hold has no expire edge: it stays on hold
    transition(session, item.row, "expire", actor=ACTOR, reason="expired")
    return True


def _end_assignment(session: Session, cred: Credential) -> int:
    """Revoke the certificates issued to the holder of a temporary card whose
    assignment ended (those of its card updates: assignment and extensions)."""
    held = session.scalars(
        select(Certificate)
        .where(
            Certificate.credential_id == cred.id,
            Certificate.update_id.is_not(None),
            Certificate.state.in_((CertState.VALID, CertState.HOLD)),
        )
        .order_by(Certificate.id)
    ).all()
    return production.revoke_all(
        session,
        held,
        actor=ACTOR,
        reason=f"assignment of temporary card {cred.id} ended without a withdrawal",
    )


def _handle(
    session: Session,
    item: _Item,
    *,
    now: dt.datetime,
    horizon: dt.datetime,
    config: ExpiryConfig,
    report: ExpiryReport,
) -> None:
    if item.until is None or item.until > horizon:
        return  # extended or renewed since the scan
    if item.row.state not in REMINDED_STATES[item.entity]:
        return  # out of use since the scan
    kind = K.EXPIRED if item.until <= now else K.EXPIRING
    if kind is K.EXPIRED and _expire(session, item, config):
        report.expired[item.entity] += 1
    if kind is K.EXPIRED and isinstance(item.row, Credential) and item.entity is E.TEMP_CARD:
        report.overdue_temp_cards.append(item.row.card_number or f"id {item.row.id}")
        report.revoked_at_assignment_end += _end_assignment(session, item.row)
    recipient = _recipient(item.holder)
    if recipient is None:
        report.no_recipient += 1
        return
    if _already_reminded(session, item, kind, report.period):
        return
    reminder = Reminder(
        entity=item.entity,
        entity_id=item.row.id,
        kind=kind,
        period=report.period,
        recipient=recipient,
    )
    session.add(reminder)
    session.flush()
    outbox.add(session, SendReminder(reminder_id=reminder.id))
    report.reminded[item.entity][kind] += 1


def _check_chunk(
    store: Store,
    chunk: Sequence[tuple[ReminderEntity, int]],
    *,
    now: dt.datetime,
    config: ExpiryConfig,
    period: str,
) -> ExpiryReport:
    horizon = now + dt.timedelta(days=config.warn_days)

    def once() -> ExpiryReport:
        report = ExpiryReport(period=period)
        with store.tx() as s:
            for entity, row_id in chunk:
                item = _load(s, entity, row_id)
                if item is not None:
                    _handle(s, item, now=now, horizon=horizon, config=config, report=report)
        return report

    try:
        return retry_transient(once)
    except (IntegrityError, ConflictError) as exc:
        # A writer that did not take the audit head lock got there first; the chunk
        # rolled back whole, and a second pass sees what it wrote.
        log.info("expiry.chunk_retry", error=type(exc).__name__)
        return retry_transient(once)


def _redrive(store: Store, period: str) -> int:
    cutoff = utcnow() - REDRIVE_AFTER
    with store.tx(audited=False) as s:
        ids = s.scalars(
            select(Reminder.id).where(
                Reminder.sent_at.is_(None), Reminder.period == period, Reminder.created_at < cutoff
            )
        ).all()
        outbox.add_all(s, (SendReminder(reminder_id=i) for i in ids))
    return len(ids)


def check_expiry(
    store: Store, config: ExpiryConfig, *, now: dt.datetime | None = None
) -> ExpiryReport:
    """Remind the holders of every expiring or expired item once per period (see the
    module docstring), move expired ones to ``expired``, and publish again the unsent
    reminders of this period. Running it twice in a period queues nothing new."""
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValueError("check_expiry needs a timezone-aware time")
    period = config.period(now)
    report = ExpiryReport(period=period)
    report.redriven = _redrive(store, period)
    with store.read() as s:
        items = _scan(s, report, now=now, horizon=now + dt.timedelta(days=config.warn_days))
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        report.merge(_check_chunk(store, chunk, now=now, config=config, period=period))
    log.info(
        "expiry.checked",
        period=period,
        reminded=sum(sum(k.values()) for k in report.reminded.values()),
        expired=sum(report.expired.values()),
        no_recipient=report.no_recipient,
        redriven=report.redriven,
    )
    return report
