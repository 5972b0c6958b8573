"""``publish_crl``: the issuing CA's CRL, published when the revoked set changes.

Many revocations in a row (a run of spoiled blanks) ask for many publications; each
request re-reads the store and publishes only when the set of revoked and held serials
differs from the last CRL's, or the last CRL is half-way to its next update. The CRL
number comes from the ``crl_publications`` table, so two publishers cannot both claim
one number (the second fails on the primary key and is retried).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import structlog
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.files import atomic_write
from db.models import Certificate, CrlPublication, utcnow
from schemas.errors import TransientError
from schemas.messages import PublishCrl
from schemas.states import CertState, RevocationReason
from workers.ca import RevokedEntry
from workers.context import WorkerContext

log = structlog.get_logger(__name__)


def revoked_entries(session: Session) -> list[RevokedEntry]:
    rows = session.execute(
        select(
            Certificate.serial,
            Certificate.state,
            Certificate.revoked_at,
            Certificate.updated_at,
            Certificate.revocation_reason,
        )
        .where(Certificate.state.in_([CertState.REVOKED, CertState.HOLD]))
        .order_by(Certificate.serial)
    ).all()
    entries = []
    for serial, state, revoked_at, updated_at, reason in rows:
        code = (
            RevocationReason.CERTIFICATE_HOLD
            if state == CertState.HOLD
            else RevocationReason(reason or RevocationReason.UNSPECIFIED)
        )
        entries.append(RevokedEntry(int(serial, 16), revoked_at or updated_at, code))
    return entries


def _fingerprint(entries: list[RevokedEntry]) -> str:
    blob = "\n".join(f"{e.serial:x}:{e.reason}" for e in entries)
    return hashlib.sha256(blob.encode()).hexdigest()


def _due(last: CrlPublication | None, fingerprint: str, now: dt.datetime) -> bool:
    if last is None or last.fingerprint != fingerprint:
        return True
    half_life = (last.next_update - last.this_update) / 2
    return now >= last.this_update + half_life


def publish_crl(ctx: WorkerContext, job: PublishCrl, *, force: bool = False) -> int | None:
    """Publish the CRL if due (or ``force``); return its number, or None if not due.

    Raises ``CrlNumberTaken`` (transient: the job is retried and decides afresh) when
    another publisher claimed the same CRL number first."""
    try:
        return _publish(ctx, job, force=force)
    except IntegrityError as exc:
        raise CrlNumberTaken("another publisher took this CRL number; trying again") from exc


class CrlNumberTaken(TransientError):
    """Two publishers raced for one CRL number; the loser retries."""


def _publish(ctx: WorkerContext, job: PublishCrl, *, force: bool) -> int | None:
    now = utcnow()
    with ctx.store.read() as s:
        entries = revoked_entries(s)
        last = s.scalars(select(CrlPublication).order_by(CrlPublication.number.desc())).first()
    fingerprint = _fingerprint(entries)
    if not force and not _due(last, fingerprint, now):
        return None
    next_update = now + dt.timedelta(hours=ctx.pki.ca.crl_validity_hours)
    with ctx.store.tx(audited=False) as s:
        number = int(s.scalar(select(func.max(CrlPublication.number))) or 0) + 1
        crl = ctx.ca.crl(entries, number=number, this_update=now, next_update=next_update)
        s.add(
            CrlPublication(
                number=number,
                this_update=now,
                next_update=next_update,
                revoked_count=len(entries),
                fingerprint=fingerprint,
            )
        )
        s.flush()  # claims the number before the files are written
        root_crl = ctx.ca.root_crl(this_update=now, next_update=next_update)
        write_crl_files(
            ctx,
            crl.public_bytes(serialization.Encoding.DER),
            root_crl.public_bytes(serialization.Encoding.DER),
        )
    log.info("pki.crl_published", number=number, revoked=len(entries), reason=job.reason)
    return number


def write_crl_files(ctx: WorkerContext, issuing_der: bytes, root_der: bytes) -> None:
    """DER for relying parties (the CDP URLs), PEM for people and openssl."""
    from cryptography import x509

    for name, der in (("issuing", issuing_der), ("root", root_der)):
        pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
        atomic_write(ctx.crl_dir / f"{name}.crl", der)
        atomic_write(ctx.crl_dir / f"{name}.crl.pem", pem)
