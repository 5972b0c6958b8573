"""``notify``: expiry reminders, each mailed once to its recipient.

``send_reminder`` reads the reminder and what it is about, mails the recipient and then
marks it sent with a guarded UPDATE (``WHERE sent_at IS NULL``). Delivery is at least
once: a redelivered message finds the reminder sent and does nothing, but a crash
between the mail and the mark sends the mail again on the next delivery.

Without a mailer (``CARDLINE_SMTP_URL`` unset) nothing is sent and the reminder stays
unsent: the expiry check publishes it again within its period, so the holder still
gets it once mail is configured. An item that went out of use since the check (a card
locked, a certificate revoked or renewed, a temporary card withdrawn, extended or given
to someone else) is not mailed; its reminder is deleted so the next check decides
afresh. A reminder carries no secret: only what the holder can read on the card.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage

import structlog
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from db.models import Certificate, Credential, Reminder, SoftToken, User, utcnow
from schemas.expiry import EXPIRED_STATES, REMINDED_STATES, ReminderEntity, ReminderKind
from schemas.messages import SendReminder
from schemas.states import CredentialKind
from workers.context import WorkerContext

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Notice:
    """What a reminder mail says: the item, its date and what the holder should do."""

    to: str
    holder: str
    item: str  # e.g. "smart card 1234567890123456"
    until: dt.datetime
    action_before: str
    action_after: str
    verbs: tuple[str, str] = ("expires", "expired")

    def message(self, now: dt.datetime) -> EmailMessage:
        past = self.until <= now
        when = f"{self.verbs[past]} on {self.until.date().isoformat()}"
        msg = EmailMessage()
        msg["To"] = self.to
        msg["Subject"] = f"Your {self.item} {when}"
        msg.set_content(
            f"Dear {self.holder},\n\n"
            f"your {self.item} {when} (UTC).\n"
            f"{self.action_after if past else self.action_before}\n\n"
            "This is an automatic reminder from Cardline.\n"
        )
        return msg


def _card_notice(cred: Credential) -> tuple[Notice, User] | None:
    holder, number = cred.user, cred.card_number or f"#{cred.id}"
    if holder is None:
        return None
    if cred.kind == CredentialKind.TEMP_CARD:
        if cred.assigned_until is None:
            return None
        notice = Notice(
            to=holder.email,
            holder=holder.display_name,
            item=f"assignment of temporary card {number}",
            until=cred.assigned_until,
            verbs=("ends", "ended"),
            action_before="Please hand it back to the card desk by then, or ask your card "
            "operator to extend the assignment.",
            action_after="Please hand it back to the card desk now, or ask your card "
            "operator to extend the assignment.",
        )
        return notice, holder
    if cred.valid_until is None:
        return None
    notice = Notice(
        to=holder.email,
        holder=holder.display_name,
        item=f"smart card {number}",
        until=cred.valid_until,
        action_before="To keep signing in with a card, ask your card operator for a "
        "renewal or a new card before then.",
        action_after="It no longer works; ask your card operator for a new card.",
    )
    return notice, holder


def _certificate_notice(s: Session, cert: Certificate) -> tuple[Notice, User] | None:
    if cert.credential_id is not None:
        cred = s.get(Credential, cert.credential_id)
        if cred is None or cred.user is None:
            return None
        kind = "temporary card" if cred.kind == CredentialKind.TEMP_CARD else "smart card"
        where, holder = f"on {kind} {cred.card_number or f'#{cred.id}'}", cred.user
        renew = "ask your card operator to renew your card"
    else:
        token = s.get(SoftToken, cert.soft_token_id) if cert.soft_token_id else None
        if token is None:
            return None
        where, holder = f"in software token {token.token_type} (#{token.id})", token.user
        renew = "request a new software token"
    notice = Notice(
        to=holder.email,
        holder=holder.display_name,
        item=f"{cert.usage} certificate (serial {cert.serial}) {where}",
        until=cert.not_after,
        action_before=f"To keep using it, {renew} before then.",
        action_after=f"It can no longer be used; {renew}.",
    )
    return notice, holder


def _in_use(reminder: Reminder, state: str) -> bool:
    entity = ReminderEntity(reminder.entity)
    if reminder.kind == ReminderKind.EXPIRED and state == EXPIRED_STATES.get(entity):
        return True  # the check moved it to expired when it queued this reminder
    return state in REMINDED_STATES[entity]


def _notice(s: Session, reminder: Reminder, now: dt.datetime) -> Notice | None:
    """The mail to send, or None when the item went out of use since the check."""
    found: tuple[Notice, User] | None = None
    if reminder.entity == ReminderEntity.CERTIFICATE:
        cert = s.get(Certificate, reminder.entity_id)
        if cert is not None and _in_use(reminder, cert.state):
            found = _certificate_notice(s, cert)
    else:
        cred = s.get(Credential, reminder.entity_id)
        if cred is not None and _in_use(reminder, cred.state):
            found = _card_notice(cred)
    if found is None:
        return None
    notice, holder = found
    if holder.email.lower() != reminder.recipient.lower():
        return None  # a temporary card given to someone else since the check
    if reminder.kind == ReminderKind.EXPIRED and notice.until > now:
        return None  # extended or renewed since the check
    return notice


def send_reminder(ctx: WorkerContext, job: SendReminder) -> None:
    rid = job.reminder_id
    now = utcnow()
    with ctx.store.read() as s:
        reminder = s.get(Reminder, rid)
        if reminder is None or reminder.sent_at is not None:
            log.info("notify.reminder_skipped", reminder_id=rid)
            return
        notice = _notice(s, reminder, now)
    if notice is None:
        with ctx.store.tx(audited=False) as s:
            s.execute(delete(Reminder).where(Reminder.id == rid, Reminder.sent_at.is_(None)))
        log.info("notify.reminder_obsolete", reminder_id=rid)
        return
    if ctx.mailer is None:
        log.warning("notify.reminder_no_mailer", reminder_id=rid)
        return
    ctx.mailer.send(notice.message(now))
    with ctx.store.tx(audited=False) as s:
        s.execute(
            update(Reminder)
            .where(Reminder.id == rid, Reminder.sent_at.is_(None))
            .values(sent_at=utcnow())
        )
    log.info("notify.reminder_sent", reminder_id=rid)
