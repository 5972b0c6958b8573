"""``notify``: PIN letters, soft token delivery and expiry reminders. Idempotent per
credential / token / reminder."""

from __future__ import annotations

from pathlib import Path

import structlog

from db.models import Credential, utcnow
from db.secrets import context
from db.transition import record
from schemas.card_numbers import mask_card_number
from schemas.messages import DeliverSoftToken, SendPinLetter, SendReminder
from workers.context import WorkerContext
from workers.letters import write_pin_letter
from workers.reminders import send_reminder
from workers.softtokens import deliver_softtoken

log = structlog.get_logger(__name__)


def notify_job(ctx: WorkerContext, job: SendPinLetter | DeliverSoftToken | SendReminder) -> None:
    """The ``notify`` queue's jobs: PIN letters, soft token delivery, expiry reminders."""
    if isinstance(job, DeliverSoftToken):
        deliver_softtoken(ctx, job)
    elif isinstance(job, SendReminder):
        send_reminder(ctx, job)
    else:
        send_pin_letter(ctx, job)


def _mail_wanted(ctx: WorkerContext) -> bool:
    return ctx.policy.pin_letter_delivery == "mail" and ctx.mailer is not None


def send_pin_letter(ctx: WorkerContext, job: SendPinLetter) -> None:
    with ctx.store.read() as s:
        cred = s.get(Credential, job.credential_id)
        if cred is None or cred.pin_sealed is None:
            log.info("notify.skipped", credential_id=job.credential_id)
            return
        if cred.pin_letter_path:
            if _mail_wanted(ctx) and cred.pin_letter_mailed_at is None:
                mail_pin_letter(ctx, job.credential_id)
            else:
                log.info("notify.skipped", credential_id=job.credential_id)
            return
        user = cred.user
        number, valid_until, sealed = cred.card_number, cred.valid_until, cred.pin_sealed
        if user is None or number is None or valid_until is None:
            log.info("notify.no_holder", credential_id=job.credential_id)
            return
        holder = (user.display_name, user.organization, user.org_unit)
    pin = ctx.box.open(sealed, context=context("credential", job.credential_id, "pin"))
    path = write_pin_letter(
        ctx.letters_dir / f"{number}.pdf",
        holder_name=holder[0],
        organization=holder[1],
        org_unit=holder[2],
        card_number=number,
        pin=pin,
        valid_until=valid_until.date(),
    )
    with ctx.store.tx() as s:
        # Read under the audit head lock, which every audited writer takes first: the
        # row cannot move between this read and the guarded update.
        cred = s.get(Credential, job.credential_id)
        if cred is not None and cred.pin_letter_path is None:
            record(
                s,
                cred,
                "pin_letter",
                actor="worker:notify",
                reason="PIN letter written",
                changes={"pin_letter_path": str(path)},
            )
    log.info(
        "notify.pin_letter", credential_id=job.credential_id, card_number=mask_card_number(number)
    )
    if _mail_wanted(ctx):
        mail_pin_letter(ctx, job.credential_id)


def mail_pin_letter(ctx: WorkerContext, credential_id: int) -> None:
    """Mail the written PIN letter to its holder, once (``pin_letter_delivery = "mail"``).

    A failed send raises ``MailError`` and the message is retried; a second delivery
    after a sent mail finds ``pin_letter_mailed_at`` set and does nothing."""
    assert ctx.mailer is not None
    with ctx.store.read() as s:
        cred = s.get(Credential, credential_id)
        if cred is None or cred.user is None or cred.pin_letter_path is None:
            return
        if cred.pin_letter_mailed_at is not None:
            return
        to, holder, number = cred.user.email, cred.user.display_name, cred.card_number or ""
        path = Path(cred.pin_letter_path)
    ctx.mailer.send_pin_letter(to=to, holder=holder, card_number=number, letter=path.read_bytes())
    with ctx.store.tx() as s:
        cred = s.get(Credential, credential_id)
        if cred is not None and cred.pin_letter_mailed_at is None:
            record(
                s,
                cred,
                "pin_letter_mail",
                actor="worker:notify",
                reason=f"PIN letter mailed to {to}",
                changes={"pin_letter_mailed_at": utcnow()},
            )
    log.info("notify.pin_letter_mailed", credential_id=credential_id)
