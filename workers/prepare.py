"""``prepare``: give an approved card its number, secrets and escrowed key; -> ready."""

from __future__ import annotations

import datetime as dt
import os

import structlog

from db.models import Credential, utcnow
from db.secrets import context, random_digits
from db.transition import transition
from schemas.messages import IssueCertificate, JobMessage, PrepareCard, ProduceCard
from schemas.states import CardState, CertUsage
from workers import keys
from workers.context import WorkerContext

log = structlog.get_logger(__name__)

CARD_NUMBER_PREFIX = "8999"


def card_number(credential_id: int) -> str:
    """A 16-digit card number: issuer prefix, the credential id, a Luhn check digit."""
    body = f"{CARD_NUMBER_PREFIX}{credential_id:011d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return body + str((10 - total % 10) % 10)


def prepare_card(ctx: WorkerContext, job: PrepareCard) -> None:
    """Idempotent: a card that is no longer ``approved`` is left as it is."""
    with ctx.store.read() as s:
        cred = s.get(Credential, job.credential_id)
        if cred is None or cred.state != CardState.APPROVED:
            log.info(
                "prepare.skipped",
                credential_id=job.credential_id,
                state=getattr(cred, "state", None),
            )
            return
    # Key generation happens outside the transaction: it can take a while (RSA) and
    # must not hold the store's write lock. A duplicate delivery wastes one key.
    number = card_number(job.credential_id)
    messages: list[JobMessage] = []
    changes: dict[str, object] = {}
    box, cid = ctx.box, job.credential_id
    if ctx.policy.escrow:
        key = keys.generate(ctx.policy.card_key_type)
        changes["escrow_key_sealed"] = box.seal(
            keys.private_pem(key), context=context("credential", cid, "escrow_key")
        )
        messages.append(
            IssueCertificate(
                credential_id=cid,
                attempt_id=None,
                usage=CertUsage.ENCRYPTION,
                csr_pem=keys.csr_pem(key, f"{number} encryption"),
            )
        )
    now = utcnow()
    changes.update(
        card_number=number,
        valid_from=now,
        valid_until=now + dt.timedelta(days=ctx.policy.card_validity_days),
        pin_sealed=box.seal(
            random_digits(ctx.policy.pin_length).reveal(), context=context("credential", cid, "pin")
        ),
        puk_sealed=box.seal(
            random_digits(ctx.policy.puk_length).reveal(), context=context("credential", cid, "puk")
        ),
        admin_key_sealed=box.seal(
            os.urandom(24).hex(), context=context("credential", cid, "admin_key")
        ),
    )
    with ctx.store.tx() as s:
        cred = s.get(Credential, cid, with_for_update=True)
        if cred is None or cred.state != CardState.APPROVED:
            return
        messages.append(ProduceCard(credential_id=cid, line=cred.line))
        transition(s, cred, "prepare", actor="worker:prepare", changes=changes, messages=messages)
    log.info("prepare.done", credential_id=cid, card_number=number)
