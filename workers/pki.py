"""``pki``: issue a certificate for a CSR, once.

Idempotent: the unique (attempt, usage) pair — or (credential, usage) for the escrowed
encryption certificate — means a second delivery finds the certificate and stops.
A certificate is never issued for an attempt that is no longer in progress.
"""

from __future__ import annotations

import datetime as dt
import math

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import wakeups
from db.models import CardUpdate, Certificate, Credential, ProductionAttempt, utcnow
from db.transition import create
from schemas.messages import IssueCertificate, IssueSoftToken, PublishCrl, RecertifyCard
from schemas.states import AttemptState, CardState, CertState, UpdateState
from workers.context import WorkerContext
from workers.crl import publish_crl
from workers.holders import holder_of
from workers.prepare import make_ready
from workers.recertify import recertify_card
from workers.softtokens import issue_softtoken

log = structlog.get_logger(__name__)


def _existing(s: Session, job: IssueCertificate) -> Certificate | None:
    stmt = select(Certificate).where(Certificate.usage == job.usage)
    if job.update_id is not None:
        stmt = stmt.where(
            Certificate.update_id == job.update_id,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
    elif job.attempt_id is None:
        stmt = stmt.where(
            Certificate.credential_id == job.credential_id,
            Certificate.attempt_id.is_(None),
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
    else:
        # A certificate the station revoked (it did not fit the chip's key) is no answer.
        stmt = stmt.where(
            Certificate.attempt_id == job.attempt_id,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
    return s.scalars(stmt).first()


def _attempt_live(s: Session, job: IssueCertificate, *, lock: bool) -> bool:
    """The request's attempt is in progress, and is the attempt of the card it names: a
    late or stray message (another card's, an earlier store's) is never answered. For a
    card update: the update is being applied, to the card the request names."""
    if job.update_id is not None:
        update = s.get(CardUpdate, job.update_id, with_for_update=lock)
        return (
            update is not None
            and update.state == UpdateState.IN_PROGRESS
            and update.credential_id == job.credential_id
        )
    if job.attempt_id is None:
        return True
    attempt = s.get(ProductionAttempt, job.attempt_id, with_for_update=lock)
    return (
        attempt is not None
        and attempt.state == AttemptState.IN_PROGRESS
        and attempt.credential_id == job.credential_id
    )


def issue_certificate(ctx: WorkerContext, job: IssueCertificate) -> None:
    with ctx.store.read() as s:
        if _existing(s, job) is not None or not _attempt_live(s, job, lock=False):
            log.info(
                "pki.skipped",
                credential_id=job.credential_id,
                attempt_id=job.attempt_id,
                usage=job.usage,
            )
            return
        cred = s.get(Credential, job.credential_id)
        if cred is None:
            log.warning("pki.unknown_credential", credential_id=job.credential_id)
            return
        holder = holder_of(cred)
    # Sign outside the transaction; re-check under the attempt's row lock before storing.
    days = ctx.policy.certificate_validity_days
    if job.not_after is not None:  # at most until then (whole days, at least one)
        left = (job.not_after - utcnow()).total_seconds() / 86400
        days = max(1, min(days, math.ceil(left)))
    cert = ctx.ca.issue(job.csr_pem, usage=job.usage, holder=holder, validity_days=days)
    with ctx.store.tx() as s:
        if not _attempt_live(s, job, lock=True) or _existing(s, job) is not None:
            return
        row = _row(job, cert)
        create(s, row, actor="worker:pki", reason=f"{job.usage} certificate")
        # The station (or desk) waiting for it looks at once (db.wakeups).
        if job.update_id is not None:
            wakeups.notify(s, "update_certificates", job.update_id)
        elif job.attempt_id is not None:
            wakeups.notify(s, "certificates", job.attempt_id)
        if job.attempt_id is None and job.update_id is None:
            # The escrowed key was the last server-side part: the card is ready now.
            cred = s.get(Credential, job.credential_id, with_for_update=True)
            if cred is not None and cred.state == CardState.APPROVED:
                make_ready(
                    s,
                    cred,
                    actor="worker:pki",
                    reason="escrow certificate issued",
                    policy=ctx.policy,
                )
    log.info(
        "pki.issued",
        credential_id=job.credential_id,
        attempt_id=job.attempt_id,
        usage=job.usage,
        serial=row.serial,
    )


def pki_job(
    ctx: WorkerContext, job: IssueCertificate | PublishCrl | IssueSoftToken | RecertifyCard
) -> None:
    """The ``pki`` queue's jobs: issue a certificate or a soft token, publish the CRL."""
    if isinstance(job, PublishCrl):
        publish_crl(ctx, job, force=job.force)
    elif isinstance(job, IssueSoftToken):
        issue_softtoken(ctx, job)
    elif isinstance(job, RecertifyCard):
        recertify_card(ctx, job)
    else:
        issue_certificate(ctx, job)


def _row(job: IssueCertificate, cert: x509.Certificate) -> Certificate:
    return Certificate(
        state=CertState.VALID,
        credential_id=job.credential_id,
        attempt_id=job.attempt_id,
        update_id=job.update_id,
        usage=job.usage,
        serial=f"{cert.serial_number:x}",
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc.astimezone(dt.UTC),
        not_after=cert.not_valid_after_utc.astimezone(dt.UTC),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
