"""``notify``: PIN letters, soft token delivery and expiry reminders. Idempotent per
credential / token / reminder."""

from __future__ import annotations

import structlog
from sqlalchemy import update

from db import audit
from db.models import Credential
from db.secrets import context
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


def send_pin_letter(ctx: WorkerContext, job: SendPinLetter) -> None:
    with ctx.store.read() as s:
        cred = s.get(Credential, job.credential_id)
        if cred is None or cred.pin_letter_path or cred.pin_sealed is None:
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
        result = s.execute(
            update(Credential)
            .where(Credential.id == job.credential_id, Credential.pin_letter_path.is_(None))
            .values(pin_letter_path=str(path))
        )
        if result.rowcount:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
            cred = s.get(Credential, job.credential_id)
            assert cred is not None
            audit.append(
                s,
                actor="worker:notify",
                entity=cred.machine.name,
                entity_id=cred.id,
                action="pin_letter",
                from_state=cred.state,
                to_state=cred.state,
                reason="PIN letter written",
            )
    log.info("notify.pin_letter", credential_id=job.credential_id, card_number=number)
