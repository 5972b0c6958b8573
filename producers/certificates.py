"""Operator actions on one certificate: revoke (with a reason), hold, release.

Each is one ``transition()`` with a ``PublishCrl`` message in the same transaction, so
the CRL follows every change.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import Certificate, utcnow
from db.transition import transition
from schemas.errors import NotFound, PermanentError
from schemas.messages import PublishCrl
from schemas.states import OPERATOR_REASONS, RevocationReason


class CertificateNotFound(NotFound):
    def __init__(self, serial: str) -> None:
        self.serial = serial
        super().__init__("certificate with serial", serial)


def find(session: Session, serial: str) -> Certificate:
    wanted = serial.lower().removeprefix("0x").lstrip("0") or "0"
    cert = session.scalars(select(Certificate).where(Certificate.serial == wanted)).first()
    if cert is None:
        raise CertificateNotFound(serial)
    return cert


def revoke(store: Store, serial: str, *, reason: RevocationReason, by: str) -> str:
    with store.tx() as s:
        return revoke_in(s, serial, reason=reason, by=by)


def revoke_in(session: Session, serial: str, *, reason: RevocationReason | str, by: str) -> str:
    """``revoke`` inside the caller's transaction."""
    if reason not in OPERATOR_REASONS:
        raise PermanentError(
            f"reason {reason!r} is not one an operator may give; choose "
            f"from {', '.join(OPERATOR_REASONS)}"
        )
    cert = find(session, serial)
    return transition(
        session,
        cert,
        "revoke",
        actor=by,
        reason=reason,
        changes={"revoked_at": utcnow(), "revocation_reason": RevocationReason(reason)},
        messages=[PublishCrl(reason=f"revoked {cert.serial}")],
    )


def hold(store: Store, serial: str, *, by: str, reason: str | None = None) -> str:
    with store.tx() as s:
        cert = find(s, serial)
        return transition(
            s,
            cert,
            "hold",
            actor=by,
            reason=reason or "certificate hold",
            messages=[PublishCrl(reason=f"held {cert.serial}")],
        )


def release(store: Store, serial: str, *, by: str, reason: str | None = None) -> str:
    with store.tx() as s:
        cert = find(s, serial)
        return transition(
            s,
            cert,
            "release",
            actor=by,
            reason=reason or "hold released",
            messages=[PublishCrl(reason=f"released {cert.serial}")],
        )
