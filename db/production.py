"""Production operations on the store, shared by stations and the reconciler.

Each function runs inside the caller's transaction and changes state only through
``transition()``. Together they keep the bureau's books: every blank fed is an
attempt row, and every attempt ends succeeded or spoiled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db import line_control, outbox
from db.models import Certificate, Credential, ProductionAttempt, Station, utcnow
from db.transition import create, transition
from schemas.errors import StateConflict
from schemas.messages import ProduceCard, PublishCrl, SendPinLetter
from schemas.states import (
    AttemptState,
    CardState,
    CertState,
    CertUsage,
    CredentialKind,
    FaultKind,
    RevocationReason,
)


def claim(
    session: Session,
    credential_id: int,
    *,
    station_id: str,
    station_instance: str,
    lease_s: float,
) -> tuple[Credential, ProductionAttempt] | None:
    """Claim a ``ready`` credential for a station: a new attempt on a new blank.

    Returns None when the credential is not ``ready`` (already produced, claimed by
    another station, cancelled): a duplicate or stale message, which is not an error.
    A station paused, or on a paused line, is refused (``StateConflict``): it takes no
    new card (``db.line_control``).
    """
    cred = session.get(Credential, credential_id, with_for_update=True)
    if cred is None or cred.state != CardState.READY:
        return None
    paused = line_control.pause_of(session, station_id=station_id, line=cred.line)
    if paused is not None:
        raise StateConflict(
            "station",
            station_id,
            "claim",
            "paused",
            ("running",),
            detail=f"{paused.scope} {paused.name} paused by {paused.paused_by}",
        )
    number = cred.attempt_count + 1
    transition(
        session,
        cred,
        "claim",
        actor=f"station:{station_id}",
        reason=f"attempt {number}",
        changes={"attempt_count": number},
    )
    attempt = create(
        session,
        ProductionAttempt(
            state=AttemptState.IN_PROGRESS,
            credential_id=cred.id,
            number=number,
            station_id=station_id,
            station_instance=station_instance,
            lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s),
        ),
        actor=f"station:{station_id}",
    )
    _station_update(session, station_id, status="busy", current_credential_id=cred.id)
    return cred, attempt


def attempt_certificates(session: Session, attempt: ProductionAttempt) -> Sequence[Certificate]:
    stmt = select(Certificate).where(Certificate.attempt_id == attempt.id)
    return session.scalars(stmt).all()


def credential_certificates(session: Session, credential_id: int) -> Sequence[Certificate]:
    stmt = select(Certificate).where(Certificate.credential_id == credential_id)
    return session.scalars(stmt).all()


def revoke_all(
    session: Session,
    certificates: Sequence[Certificate],
    *,
    actor: str,
    reason: str,
    code: RevocationReason = RevocationReason.CESSATION_OF_OPERATION,
) -> int:
    """Revoke every certificate in the list that is still valid or on hold."""
    revoked = 0
    for cert in certificates:
        if cert.state in (CertState.VALID, CertState.HOLD):
            transition(
                session,
                cert,
                "revoke",
                actor=actor,
                reason=reason,
                changes={"revoked_at": utcnow(), "revocation_reason": code},
            )
            revoked += 1
    if revoked:
        outbox.add(session, PublishCrl(reason=reason))
    return revoked


def complete(
    session: Session,
    attempt: ProductionAttempt,
    *,
    chip_serial: str | None,
    activation_step: bool,
) -> Credential:
    """The card left the printer good: attempt succeeded, card active (or issued)."""
    actor = f"station:{attempt.station_id}"
    cred = session.get(Credential, attempt.credential_id, with_for_update=True)
    assert cred is not None  # a foreign key guarantees it
    transition(
        session,
        attempt,
        "succeed",
        actor=actor,
        changes={"finished_at": utcnow(), "chip_serial": chip_serial},
    )
    serial = {"chip_serial": chip_serial} if chip_serial else {}
    if cred.kind == CredentialKind.TEMP_CARD:
        transition(session, cred, "complete", actor=actor, changes=serial)
    else:
        action = "complete_issued" if activation_step else "complete"
        transition(
            session,
            cred,
            action,
            actor=actor,
            changes=serial,
            messages=[SendPinLetter(credential_id=cred.id)],
        )
    # What the chip now carries: the attempt's certificates and the escrowed key's.
    session.execute(
        update(Certificate)
        .where(
            or_(
                Certificate.attempt_id == attempt.id,
                and_(Certificate.attempt_id.is_(None), Certificate.credential_id == cred.id),
            ),
            Certificate.state.in_((CertState.VALID, CertState.HOLD)),
        )
        .values(on_chip=True)
        .execution_options(synchronize_session=False)
    )
    _station_update(session, attempt.station_id, status="idle", current_credential_id=None, done=1)
    return cred


def spoil(
    session: Session,
    attempt: ProductionAttempt,
    *,
    fault: str,
    detail: str,
    actor: str,
    max_attempts: int,
) -> str:
    """The blank is spoiled: revoke what was issued for it, and queue the card again
    on a new blank, or fail it after ``max_attempts`` faults of the card or its device
    (``CARD_FAULTS``). Returns the card's new state."""
    transition(
        session,
        attempt,
        "spoil",
        actor=actor,
        reason=fault,
        changes={"finished_at": utcnow(), "fault": fault, "fault_detail": detail[:500]},
    )
    # Read the certificates after the attempt row is ours: an issuance racing with
    # this spoil either committed before (and is revoked here) or sees the attempt
    # spoiled and issues nothing.
    revoke_all(
        session,
        attempt_certificates(session, attempt),
        actor=actor,
        reason=f"attempt spoiled: {fault}",
    )
    cred = session.get(Credential, attempt.credential_id, with_for_update=True)
    assert cred is not None  # a foreign key guarantees it
    _station_update(
        session, attempt.station_id, status="idle", current_credential_id=None, spoiled=1
    )
    if cred.state != CardState.PRODUCING:
        return cred.state
    # Only the attempts since the card's last retry count (a retry is a new budget).
    card_faults = _card_faults(session, cred.id, after=cred.attempt_base)
    spent = cred.attempt_count - cred.attempt_base
    if card_faults >= max_attempts or spent >= max_attempts * ATTEMPTS_CAP_FACTOR:
        # A failed card will never carry its escrowed encryption certificate either.
        revoke_all(
            session,
            credential_certificates(session, cred.id),
            actor=actor,
            reason="card failed",
        )
        return transition(
            session,
            cred,
            "fail",
            actor=actor,
            reason=f"{card_faults} card or device faults in {spent} attempts; last: {fault}",
        )
    return transition(
        session,
        cred,
        "fault",
        actor=actor,
        reason=fault,
        messages=[ProduceCard(credential_id=cred.id, line=cred.line)],
    )


# Faults that count against a card's ``max_attempts``: the card's own or its device's.
# A station killed or restarted with the card in it, or a lease lost while the store
# was away, spoils that blank (it is accounted for) but is not the card's fault.
CARD_FAULTS = frozenset(
    {FaultKind.CHIP, FaultKind.PRINT, FaultKind.JAM, FaultKind.CERTIFICATE_TIMEOUT}
)
# However a card's attempts end, it fails after this many times ``max_attempts`` blanks,
# so a card that takes its station down every time cannot spend blanks for ever.
ATTEMPTS_CAP_FACTOR = 4


def _card_faults(session: Session, credential_id: int, *, after: int = 0) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(ProductionAttempt)
            .where(
                ProductionAttempt.credential_id == credential_id,
                ProductionAttempt.number > after,
                ProductionAttempt.state == AttemptState.SPOILED,
                ProductionAttempt.fault.in_([str(f) for f in CARD_FAULTS]),
            )
        )
        or 0
    )


def renew_lease(session: Session, attempt_id: int, lease_s: float) -> bool:
    """Extend a live attempt's lease; False when the attempt is no longer live."""
    result = session.execute(
        update(ProductionAttempt)
        .where(
            ProductionAttempt.id == attempt_id,
            ProductionAttempt.state == AttemptState.IN_PROGRESS,
        )
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


def expired_attempts(session: Session, *, limit: int = 100) -> Sequence[ProductionAttempt]:
    stmt = (
        select(ProductionAttempt)
        .where(
            ProductionAttempt.state == AttemptState.IN_PROGRESS,
            ProductionAttempt.lease_expires_at < utcnow(),
        )
        .order_by(ProductionAttempt.id)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def live_attempts_of(session: Session, station_id: str) -> Sequence[ProductionAttempt]:
    stmt = select(ProductionAttempt).where(
        ProductionAttempt.station_id == station_id,
        ProductionAttempt.state == AttemptState.IN_PROGRESS,
    )
    return session.scalars(stmt).all()


def register_station(session: Session, station_id: str, *, line: str, instance: str) -> None:
    """Record that a station process (``instance``) started and is idle."""
    row = session.get(Station, station_id)
    now = utcnow()
    if row is None:
        session.add(
            Station(
                id=station_id,
                line=line,
                instance=instance,
                status="idle",
                started_at=now,
                heartbeat_at=now,
            )
        )
        return
    row.line, row.instance, row.status = line, instance, "idle"
    row.started_at = row.heartbeat_at = now
    row.current_credential_id = None


def heartbeat(session: Session, station_id: str, *, status: str | None = None) -> None:
    values: dict[str, object] = {"heartbeat_at": utcnow()}
    if status is not None:
        values["status"] = status
    session.execute(update(Station).where(Station.id == station_id).values(**values))


def _station_update(
    session: Session,
    station_id: str,
    *,
    status: str,
    current_credential_id: int | None,
    done: int = 0,
    spoiled: int = 0,
) -> None:
    session.execute(
        update(Station)
        .where(Station.id == station_id)
        .values(
            status=status,
            current_credential_id=current_credential_id,
            heartbeat_at=utcnow(),
            cards_done=Station.cards_done + done,
            cards_spoiled=Station.cards_spoiled + spoiled,
        )
    )


@dataclass(frozen=True)
class EscrowedKey:
    """An earlier card's escrowed encryption key (sealed) and its certificate."""

    credential_id: int
    key_sealed: str
    cert_pem: str


def escrow_history(session: Session, cred: Credential) -> list[EscrowedKey]:
    """The holder's escrowed encryption keys from their other cards, oldest first, for a
    card produced with key recovery (``recover_escrow``); empty otherwise."""
    if not cred.recover_escrow or cred.user_id is None:
        return []
    rows = session.execute(
        select(Credential.id, Credential.escrow_key_sealed, Certificate.pem)
        .join(Certificate, Certificate.credential_id == Credential.id)
        .where(
            Credential.user_id == cred.user_id,
            Credential.id != cred.id,
            Credential.escrow_key_sealed.is_not(None),
            Certificate.attempt_id.is_(None),
            Certificate.usage == CertUsage.ENCRYPTION,
        )
        .order_by(Credential.id, Certificate.id)
    ).all()
    latest = {cid: EscrowedKey(cid, sealed, pem) for cid, sealed, pem in rows if sealed}
    return list(latest.values())  # one per card: its key with its newest certificate
