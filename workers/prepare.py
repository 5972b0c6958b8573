"""``prepare``: give an approved card its number, secrets and escrowed key; -> ready."""

from __future__ import annotations

import datetime as dt
import os

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import keys, outbox
from db.models import Certificate, Credential, utcnow
from db.secrets import context, random_digits
from db.transition import transition
from schemas.card_numbers import mask_card_number
from schemas.errors import PermanentError
from schemas.messages import IssueCertificate, JobMessage, PrepareCard, ProduceCard
from schemas.policy import Policy
from schemas.states import CardState, CertState, CertUsage
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
    """Idempotent, and it resumes: a card that is no longer ``approved`` is left as it
    is; one whose secrets are sealed but whose escrowed key has no certificate yet asks
    for it again; one whose escrow certificate exists is made ``ready``.
    """
    cid = job.credential_id
    with ctx.store.read() as s:
        cred = s.get(Credential, cid)
        if cred is None or cred.state != CardState.APPROVED:
            log.info("prepare.skipped", credential_id=cid, state=getattr(cred, "state", None))
            return
        sealed_escrow = cred.escrow_key_sealed
        number = cred.card_number
        certified = sealed_escrow is not None and escrow_certificate(s, cid) is not None
    if certified:
        _make_ready(ctx, cid, reason="escrow certificate already issued")
    elif sealed_escrow is not None and number is not None:
        _request_escrow_certificate(ctx, cid, number, sealed_escrow)
    else:
        _prepare(ctx, cid)


def escrow_certificate(s: Session, credential_id: int) -> Certificate | None:
    """The card's live escrowed encryption certificate (issued before production)."""
    return s.scalars(
        select(Certificate).where(
            Certificate.credential_id == credential_id,
            Certificate.attempt_id.is_(None),
            Certificate.usage == CertUsage.ENCRYPTION,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
    ).first()


def _prepare(ctx: WorkerContext, cid: int) -> None:
    # Key generation happens outside the transaction: it can take a while (RSA) and
    # must not hold the store's write lock. A duplicate delivery wastes one key.
    number = card_number(cid)
    messages: list[JobMessage] = []
    changes: dict[str, object] = {}
    box = ctx.box
    if ctx.policy.escrow:
        key = keys.generate(ctx.policy.card_key_type)
        changes["escrow_key_sealed"] = box.seal(
            keys.private_pem(key), context=context("credential", cid, "escrow_key")
        )
        messages.append(_escrow_request(cid, number, key))
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
        if cred is None or cred.state != CardState.APPROVED or cred.card_number is not None:
            return
        if ctx.policy.escrow:
            # Not ready yet: the pki worker makes the card ready in the transaction that
            # stores the escrow certificate, so no station is sent a card it cannot finish.
            transition(
                s,
                cred,
                "escrow",
                actor="worker:prepare",
                reason="secrets sealed, escrow certificate requested",
                changes=changes,
                messages=messages,
            )
        else:
            if cred.line not in ctx.policy.bureau_lines:  # a bureau's: in its next order
                messages.append(ProduceCard(credential_id=cid, line=cred.line))
            transition(
                s, cred, "prepare", actor="worker:prepare", changes=changes, messages=messages
            )
    log.info(
        "prepare.done",
        credential_id=cid,
        card_number=mask_card_number(number),
        escrow=ctx.policy.escrow,
    )


def _escrow_request(cid: int, number: str, key: keys.PrivateKey) -> IssueCertificate:
    return IssueCertificate(
        credential_id=cid,
        attempt_id=None,
        usage=CertUsage.ENCRYPTION,
        csr_pem=keys.csr_pem(key, f"{number} encryption"),
    )


def _request_escrow_certificate(ctx: WorkerContext, cid: int, number: str, sealed: str) -> None:
    """Ask again for the escrow certificate of a card prepared earlier (its request was
    lost): a CSR made afresh from the sealed key, so the certificate fits that key."""
    pem = ctx.box.open(sealed, context=context("credential", cid, "escrow_key"))
    key = serialization.load_pem_private_key(pem.reveal().encode(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PermanentError(f"credential {cid}: escrowed key of unexpected type {type(key)}")
    with ctx.store.tx(audited=False) as s:
        outbox.add(s, _escrow_request(cid, number, key))
    log.info("prepare.escrow_requested_again", credential_id=cid)


def _make_ready(ctx: WorkerContext, cid: int, *, reason: str) -> None:
    with ctx.store.tx() as s:
        cred = s.get(Credential, cid, with_for_update=True)
        if cred is not None and cred.state == CardState.APPROVED:
            make_ready(s, cred, actor="worker:prepare", reason=reason, policy=ctx.policy)


def make_ready(s: Session, cred: Credential, *, actor: str, reason: str, policy: Policy) -> None:
    """approved -> ready, and the card goes to its line's queue (a bureau's line: to the
    bureau's next order file, ``producers.bureaus``)."""
    to_line = cred.line not in policy.bureau_lines
    transition(
        s,
        cred,
        "prepare",
        actor=actor,
        reason=reason,
        messages=[ProduceCard(credential_id=cred.id, line=cred.line)] if to_line else [],
    )
