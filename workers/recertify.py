"""New certificates for the keys already on a card: renewal, temporary-card assignment.

A producer sets ``recertify_requested_at`` on the card and sends ``RecertifyCard`` in
the same transaction. This worker issues, for every usage whose current certificate
(valid or on hold) is older than that moment, a new certificate for the same public
key with the card holder's subject (a temporary card's assigned user), then in one
transaction revokes the old ones as superseded, stores the new ones and asks for a CRL
(and the PIN letter, for an assignment). The private keys never move: they stay on the
chip, or sealed in escrow.

The request is done when ``recertify_requested_at`` is cleared again (in that same
transaction): a second delivery finds it cleared and does nothing, and a delivery that
finds it moved (a newer request) leaves the work to the newer message.
"""

from __future__ import annotations

import datetime as dt

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import outbox
from db.models import Certificate, Credential, utcnow
from db.transition import create, transition
from schemas.messages import PublishCrl, RecertifyCard, SendPinLetter
from schemas.states import CertState, CertUsage, RevocationReason
from workers.context import WorkerContext
from workers.holders import holder_of

log = structlog.get_logger(__name__)


def _newest(s: Session, credential_id: int) -> list[Certificate]:
    """The card's newest certificate of each usage, whatever its state: its key is the
    key on the card (a withdrawn temporary card's were revoked, its keys stay)."""
    rows = s.scalars(
        select(Certificate)
        .where(Certificate.credential_id == credential_id)
        .order_by(Certificate.id)
    )
    newest: dict[str, Certificate] = {}
    for row in rows:
        newest[row.usage] = row
    return list(newest.values())


def _stale(cred: Credential, certs: list[Certificate]) -> list[Certificate]:
    """Those to re-issue: older than the request, or no longer in force."""
    wanted = cred.recertify_requested_at
    if wanted is None:
        return []
    live = (CertState.VALID, CertState.HOLD)
    return [c for c in certs if c.created_at < wanted or c.state not in live]


def recertify_card(ctx: WorkerContext, job: RecertifyCard) -> None:
    with ctx.store.read() as s:
        cred = s.get(Credential, job.credential_id)
        if cred is None or cred.recertify_requested_at is None:
            log.info("pki.recertify_skipped", credential_id=job.credential_id)
            return
        seen = cred.recertify_requested_at
        stale = _stale(cred, _newest(s, cred.id))
        holder = holder_of(cred)
        plan = [(c.id, c.usage, c.pem) for c in stale]
    issued: list[tuple[int, str, x509.Certificate]] = []
    for old_id, usage, pem in plan:
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # we issued it
        cert = ctx.ca.issue_for_key(
            key,
            profile=ctx.pki.profiles[CertUsage(usage)],
            holder=holder,
            validity_days=ctx.policy.certificate_validity_days,
        )
        issued.append((old_id, usage, cert))
    with ctx.store.tx() as s:
        cred = s.get(Credential, job.credential_id, with_for_update=True)
        assert cred is not None
        # Under the card's row lock: another delivery finished it, or a newer request
        # came (its own message redoes the work for the newer holder).
        if cred.recertify_requested_at != seen:
            log.info("pki.recertify_raced", credential_id=job.credential_id)
            return
        for old_id, usage, cert in issued:
            old = s.get(Certificate, old_id)
            assert old is not None
            if old.state in (CertState.VALID, CertState.HOLD):
                transition(
                    s,
                    old,
                    "revoke",
                    actor="worker:pki",
                    reason=RevocationReason.SUPERSEDED,
                    changes={
                        "revoked_at": utcnow(),
                        "revocation_reason": RevocationReason.SUPERSEDED,
                    },
                )
            create(s, _row(cred.id, usage, cert), actor="worker:pki", reason=f"{usage} re-issued")
        cred.recertify_requested_at = None
        if issued:
            outbox.add(s, PublishCrl(reason=f"card {cred.id} re-certified"))
        if job.pin_letter:
            cred.pin_letter_path = None  # the letter goes to the new holder
            outbox.add(s, SendPinLetter(credential_id=cred.id))
    log.info("pki.recertified", credential_id=job.credential_id, certificates=len(issued))


def _row(credential_id: int, usage: str, cert: x509.Certificate) -> Certificate:
    return Certificate(
        state=CertState.VALID,
        credential_id=credential_id,
        attempt_id=None,
        usage=usage,
        serial=f"{cert.serial_number:x}",
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc.astimezone(dt.UTC),
        not_after=cert.not_valid_after_utc.astimezone(dt.UTC),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
