"""Card updates in the store: what must change on a produced card's chip, and how far it
has come (issue 13).

An operation that needs the chip changed (a renewal) creates a ``CardUpdate`` in its
own transaction, ``pending``. The card's holder brings the card to an update desk (or
any station's encoder); the desk reads the chip serial, finds the card's pending
updates and applies them in order (``stations.desk``). Each step the desk finished on
the chip is recorded in the update's journal before the next begins, so a card pulled
or a desk killed resumes at the next insertion without repeating or losing a step.
The store says a certificate is on the chip (``Certificate.on_chip``) only once the
desk has written it and read it back; old certificates stay valid until then, and are
revoked (superseded) only in the transaction that records their erasure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db import outbox
from db.models import CardUpdate, Certificate, Credential, utcnow
from db.production import revoke_all
from db.transition import create, record, transition
from schemas.errors import PermanentError, StateConflict, ValidationFailed
from schemas.messages import PublishCrl, SendPinLetter
from schemas.states import (
    CardState,
    CertState,
    CertUsage,
    CredentialKind,
    RevocationReason,
    UpdateKind,
    UpdateState,
)

_LIVE_CERTS = (CertState.VALID, CertState.HOLD)


def open_updates(session: Session, credential_id: int) -> Sequence[CardUpdate]:
    """The card's updates not yet applied, failed or cancelled, oldest first."""
    return session.scalars(
        select(CardUpdate)
        .where(
            CardUpdate.credential_id == credential_id,
            CardUpdate.state.in_((UpdateState.PENDING, UpdateState.IN_PROGRESS)),
        )
        .order_by(CardUpdate.id)
    ).all()


def on_chip(session: Session, credential_id: int) -> Sequence[Certificate]:
    """The certificates the store says the card's chip carries."""
    return session.scalars(
        select(Certificate)
        .where(Certificate.credential_id == credential_id, Certificate.on_chip.is_(True))
        .order_by(Certificate.id)
    ).all()


def generated_usages(session: Session, credential_id: int) -> list[str]:
    """The usages whose keys were generated on the chip (not the escrowed key, even
    once re-certified by an update)."""
    escrowed = session.scalar(
        select(Credential.escrow_key_sealed.is_not(None)).where(Credential.id == credential_id)
    )
    return sorted(
        {
            c.usage
            for c in on_chip(session, credential_id)
            if (c.attempt_id is not None or c.update_id is not None)
            and not (escrowed and c.usage == CertUsage.ENCRYPTION)
        }
    )


def _escrowed_on_chip(session: Session, cred: Credential) -> bool:
    """The card carries its escrowed encryption key (with a certificate on the chip)."""
    return cred.escrow_key_sealed is not None and any(
        c.usage == CertUsage.ENCRYPTION for c in on_chip(session, cred.id)
    )


def _new_update(
    session: Session,
    cred: Credential,
    kind: UpdateKind,
    plan: dict[str, Any],
    *,
    by: str,
    what: str,
) -> CardUpdate:
    """A pending update of ``cred`` (audited ``create``), waiting for the card."""
    return create(
        session,
        CardUpdate(
            state=UpdateState.PENDING,
            credential_id=cred.id,
            kind=kind,
            requested_by=by,
            plan=plan,
            journal={},
        ),
        actor=by,
        reason=f"{kind} ({what}): waiting for the card at a desk",
    )


def _refuse_while_open(session: Session, cred: Credential, action: str) -> None:
    """One update at a time per card: they are applied in order, and a second one
    asked for while the first waits would be planned against a chip about to change."""
    waiting = open_updates(session, cred.id)
    if waiting:
        raise StateConflict(
            "card",
            cred.id,
            action,
            cred.state,
            (),
            detail=f"update {waiting[0].id} ({waiting[0].kind}) is still {waiting[0].state}",
        )


def request_renewal(
    session: Session,
    cred: Credential,
    *,
    by: str,
    usages: Sequence[str] = (),
    keep_keys: bool = False,
    recover: Sequence[str] | None = None,
) -> CardUpdate:
    """A pending renewal of ``cred`` (seed 002 §5.3.5): for each of ``usages`` (default:
    every usage whose key was generated on the chip) new keys on the chip, new
    certificates, the old ones erased and then revoked; with ``keep_keys``, new
    certificates for the keys the chip has (re-certification). With ``recover`` (escrowed
    key serials; empty: all of them) the holder's earlier encryption keys are written in
    the same visit, by a recovery update made in the same transaction. Refused
    (``StateConflict``) while another update of the card is open; a usage that is not
    renewable is ``ValidationFailed`` naming ``usages``."""
    _refuse_while_open(session, cred, "renew")
    renewable = generated_usages(session, cred.id)
    if not renewable:
        raise StateConflict(
            "card", cred.id, "renew", cred.state, (), detail="the chip carries no key to renew"
        )
    chosen = sorted(dict.fromkeys(usages)) or renewable
    if keep_keys and _escrowed_on_chip(session, cred):
        # The escrowed key is re-certified (a new certificate for the same key, which
        # stays in escrow); a new escrowed key is not something a renewal makes.
        renewable = sorted({*renewable, CertUsage.ENCRYPTION.value})
    wrong = [u for u in chosen if u not in renewable]
    if wrong:
        hint = (
            "; the escrowed encryption key is re-certified with keep_keys, never replaced"
            if CertUsage.ENCRYPTION.value in wrong and not keep_keys
            else ""
        )
        raise ValidationFailed(
            f"not renewable on this card: {', '.join(wrong)} (renewable: "
            f"{', '.join(renewable)}{hint})",
            field="usages",
        )
    plan: dict[str, Any] = {"usages": chosen}
    if keep_keys:
        plan["keep_keys"] = True
    what = ", ".join(chosen) + (" (same keys)" if keep_keys else "")
    row = _new_update(session, cred, UpdateKind.RENEW, plan, by=by, what=what)
    if recover is not None:
        session.flush()
        _recovery(session, cred, by=by, serials=recover)
    return row


@dataclass(frozen=True)
class EscrowedKey:
    """One of a holder's escrowed encryption keys: the card it was made for, its
    newest certificate, and the key, sealed."""

    credential_id: int
    card_number: str | None
    serial: str
    not_after: dt.datetime
    cert_pem: str
    key_sealed: str


def holder_escrowed_keys(session: Session, cred: Credential) -> list[EscrowedKey]:
    """The escrowed encryption keys of ``cred``'s holder from their other cards, oldest
    first, each with its newest certificate."""
    if cred.user_id is None:
        return []
    rows = session.execute(
        select(Credential.id, Credential.card_number, Credential.escrow_key_sealed, Certificate)
        .join(Certificate, Certificate.credential_id == Credential.id)
        .where(
            Credential.user_id == cred.user_id,
            Credential.id != cred.id,
            Credential.escrow_key_sealed.is_not(None),
            Certificate.attempt_id.is_(None),
            Certificate.usage == CertUsage.ENCRYPTION,
            # (a re-certified key's newest certificate is an update's)
        )
        .order_by(Credential.id, Certificate.id)
    ).all()
    latest: dict[int, EscrowedKey] = {}
    for cred_id, number, sealed, cert in rows:
        if sealed is None:  # the query asks only for sealed ones
            continue
        latest[cred_id] = EscrowedKey(
            cred_id, number, cert.serial, cert.not_after, cert.pem, sealed
        )
    return list(latest.values())


def request_recovery(
    session: Session, cred: Credential, *, by: str, serials: Sequence[str] = ()
) -> CardUpdate:
    """A pending update writing the holder's escrowed keys named by certificate serial
    (all of them when ``serials`` is empty) onto the produced card ``cred``, beside its
    own keys. ``ValidationFailed`` naming a serial that is not one of the holder's."""
    _refuse_while_open(session, cred, "recover_escrow")
    return _recovery(session, cred, by=by, serials=serials)


def _recovery(session: Session, cred: Credential, *, by: str, serials: Sequence[str]) -> CardUpdate:
    known = {k.serial: k for k in holder_escrowed_keys(session, cred)}
    if not known:
        raise PermanentError(f"the holder of card {cred.id} has no escrowed keys to recover")
    wanted = list(dict.fromkeys(serials)) or list(known)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ValidationFailed(
            f"not an escrowed key of this card's holder: {', '.join(unknown)}", field="keys"
        )
    keys = [{"credential_id": known[s].credential_id, "serial": s} for s in wanted]
    return _new_update(
        session, cred, UpdateKind.RECOVER, {"keys": keys}, by=by, what=f"{len(keys)} key(s)"
    )


# Updates that write new keys and certificates for the card's holder (a renewal's
# procedure), and those that also give the card a new PIN.
REKEYING = frozenset({UpdateKind.RENEW, UpdateKind.ASSIGN, UpdateKind.EXTEND, UpdateKind.ACTIVATE})
NEW_PIN = frozenset({UpdateKind.ASSIGN, UpdateKind.EXTEND, UpdateKind.RESET_PIN})


def request_activation(
    session: Session, cred: Credential, usages: Sequence[str], *, by: str, replaces: bool
) -> CardUpdate:
    """A pending activation of ``cred``, a card a service bureau delivered (``issued``,
    its chip serial bound): at the desk the chip is personalised (``usages``' keys made
    on it, the escrowed key imported) and the card becomes ``active``; with ``replaces``
    the holder's other cards are terminated then."""
    plan: dict[str, Any] = {"usages": sorted(usages), "replaces": replaces}
    return _new_update(session, cred, UpdateKind.ACTIVATE, plan, by=by, what="personalise")


def apply_activation(session: Session, row: CardUpdate, *, station_id: str) -> int:
    """The delivered card's chip is personalised and read back: the update ``applied``,
    its certificates and the escrowed one on the chip, the card ``active`` (a PIN
    letter follows), and, when the plan says so, the holder's previous cards locked and
    their certificates revoked (superseded). Returns how many cards were terminated."""
    actor = f"station:{station_id}"
    cred = session.get(Credential, row.credential_id, with_for_update=True)
    assert cred is not None  # a foreign key guarantees it
    session.execute(
        update(Certificate)
        .where(
            Certificate.credential_id == cred.id,
            Certificate.attempt_id.is_(None),
            or_(Certificate.update_id == row.id, Certificate.update_id.is_(None)),
            Certificate.state.in_(_LIVE_CERTS),
        )
        .values(on_chip=True)
        .execution_options(synchronize_session=False)
    )
    _applied(session, row, reason="personalised at the desk, read back", station_id=station_id)
    transition(
        session,
        cred,
        "activate",
        actor=actor,
        reason="personalised at an update desk",
        messages=[SendPinLetter(credential_id=cred.id)],
    )
    if not row.plan.get("replaces") or cred.user_id is None:
        return 0
    previous = session.scalars(
        select(Credential)
        .where(
            Credential.user_id == cred.user_id,
            Credential.id != cred.id,
            Credential.kind == CredentialKind.CARD,
            Credential.state.in_((CardState.ISSUED, CardState.ACTIVE, CardState.INACTIVE)),
        )
        .with_for_update()
    ).all()
    for old in previous:
        transition(
            session,
            old,
            "lock",
            actor=actor,
            reason=f"replaced by card {cred.card_number or cred.id}, now active",
        )
        certs = session.scalars(
            select(Certificate).where(
                Certificate.credential_id == old.id, Certificate.state.in_(_LIVE_CERTS)
            )
        ).all()
        revoke_all(
            session,
            certs,
            actor=actor,
            reason=f"card {old.id} replaced",
            code=RevocationReason.SUPERSEDED,
        )
    return len(previous)


def request_pin_reset(session: Session, cred: Credential, *, by: str) -> CardUpdate:
    """A pending PIN reset of ``cred``: at the desk the card's PUK sets a new PIN, whose
    letter then goes to the holder. It may wait beside another update (the desk applies
    it first when the card's PIN no longer opens the card); a second one is refused."""
    if any(u.kind == UpdateKind.RESET_PIN for u in open_updates(session, cred.id)):
        raise StateConflict(
            "card",
            cred.id,
            "reset_pin",
            cred.state,
            (),
            detail="a PIN reset of this card already waits for it at a desk",
        )
    return _new_update(session, cred, UpdateKind.RESET_PIN, {}, by=by, what="new PIN")


def _applied(
    session: Session,
    row: CardUpdate,
    *,
    reason: str,
    station_id: str | None = None,
    actor: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """``row`` is ``applied``: the chip carries what it asked for."""
    transition(
        session,
        row,
        "apply",
        actor=actor or f"station:{station_id}",
        reason=reason,
        changes={"applied_at": at or utcnow(), "lease_expires_at": None},
    )


def apply_pin_reset(session: Session, row: CardUpdate, *, station_id: str) -> None:
    """The chip took the new PIN (``apply_new_secrets`` records it in the same
    transaction)."""
    _applied(session, row, reason="PIN reset with the card's PUK", station_id=station_id)


def request_temp_card_update(
    session: Session,
    cred: Credential,
    kind: UpdateKind,
    *,
    by: str,
    usages: Sequence[str],
    not_after: dt.datetime | None = None,
) -> CardUpdate:
    """A temporary card's update for its next desk: ``assign``/``extend`` (new keys and
    certificates for its holder valid until ``not_after``, a new PIN) or ``wipe`` (every
    key erased, PIN and PUK rotated). Pending updates it makes pointless (an earlier
    assignment not yet written) are cancelled; one a desk is writing refuses it."""
    for row in open_updates(session, cred.id):
        if row.state == UpdateState.IN_PROGRESS:
            raise StateConflict(
                "temp_card",
                cred.id,
                str(kind),
                cred.state,
                (),
                detail=f"update {row.id} ({row.kind}) is being written at {row.station_id}",
            )
        transition(session, row, "cancel", actor=by, reason=f"replaced by {kind}")
    plan: dict[str, Any] = {"usages": sorted(usages)} if kind != UpdateKind.WIPE else {}
    if not_after is not None:
        plan["not_after"] = not_after.isoformat()
    return _new_update(session, cred, kind, plan, by=by, what=", ".join(usages) or "all keys")


def apply_new_secrets(
    session: Session, row: CardUpdate, *, station_id: str, secrets: dict[str, str]
) -> None:
    """Inside the transaction that applies ``row``: the card's sealed PIN (and PUK) are
    now the ones the desk set on the chip; a new PIN means a new PIN letter."""
    cred = session.get(Credential, row.credential_id, with_for_update=True)
    assert cred is not None  # a foreign key guarantees it
    changes: dict[str, Any] = {f"{what}_sealed": sealed for what, sealed in secrets.items()}
    messages = []
    if "pin" in secrets and row.kind in NEW_PIN:
        changes["pin_letter_path"] = None
        messages.append(SendPinLetter(credential_id=cred.id))
    record(
        session,
        cred,
        "secrets_rotated",
        actor=f"station:{station_id}",
        reason=f"{', '.join(sorted(secrets))} set on the chip by update {row.id}",
        changes=changes,
        messages=messages,
    )


def apply_wipe(session: Session, row: CardUpdate, *, station_id: str) -> None:
    """Every key is gone from the chip: nothing of the card's certificates is on it."""
    session.execute(
        update(Certificate)
        .where(Certificate.credential_id == row.credential_id)
        .values(on_chip=False)
        .execution_options(synchronize_session=False)
    )
    _applied(
        session,
        row,
        reason="every key erased from the chip, PIN and PUK rotated",
        station_id=station_id,
    )


def apply_recovery(session: Session, row: CardUpdate, *, station_id: str) -> None:
    """The recovered keys are on the chip, read back: the update ``applied``."""
    _applied(
        session,
        row,
        reason=f"{len(row.plan.get('keys', ()))} escrowed key(s) read back from the chip",
        station_id=station_id,
    )


def claimable(row: CardUpdate, *, station_id: str, now: dt.datetime | None = None) -> bool:
    """Whether a desk may take ``row`` now: pending, or in progress at this desk (a
    restart) or at one whose lease has run out."""
    if row.state == UpdateState.PENDING:
        return True
    if row.state != UpdateState.IN_PROGRESS:
        return False
    expires = row.lease_expires_at
    return row.station_id == station_id or expires is None or expires < (now or utcnow())


def claim(session: Session, row: CardUpdate, *, station_id: str, lease_s: float) -> None:
    """Take the update for ``station_id`` (``pending -> in_progress``, or renew the lease
    of one this or a dead desk left in progress)."""
    lease = utcnow() + dt.timedelta(seconds=lease_s)
    actor = f"station:{station_id}"
    if row.state == UpdateState.PENDING:
        transition(
            session,
            row,
            "claim",
            actor=actor,
            changes={"station_id": station_id, "lease_expires_at": lease},
        )
    else:
        record(
            session,
            row,
            "step",
            actor=actor,
            reason="resumed",
            expect=(UpdateState.IN_PROGRESS,),
            changes={"station_id": station_id, "lease_expires_at": lease},
        )


def step(
    session: Session, row: CardUpdate, *, station_id: str, journal: dict[str, Any], reason: str
) -> None:
    """Record a step the desk finished on the chip (the journal as it is now)."""
    record(
        session,
        row,
        "step",
        actor=f"station:{station_id}",
        reason=reason,
        expect=(UpdateState.IN_PROGRESS,),
        changes={"journal": journal},
    )


def mark_written(session: Session, row: CardUpdate, serials: Sequence[str]) -> None:
    """The chip carries the update's new certificates, read back: say so."""
    session.execute(
        update(Certificate)
        .where(Certificate.update_id == row.id, Certificate.serial.in_(list(serials)))
        .values(on_chip=True)
        .execution_options(synchronize_session=False)
    )


def superseded(session: Session, row: CardUpdate) -> Sequence[Certificate]:
    """The card's certificates on the chip that ``row`` (a renewal) replaces."""
    usages = set(row.plan.get("usages", ()))
    return [
        c
        for c in on_chip(session, row.credential_id)
        if c.usage in usages and c.update_id != row.id
    ]


def apply_renewal(session: Session, row: CardUpdate, *, station_id: str) -> int:
    """The renewal is on the chip and the old keys are erased: the update ``applied``,
    the old certificates off the chip and revoked (superseded), a CRL asked for.
    Returns how many certificates were revoked."""
    actor = f"station:{station_id}"
    old = superseded(session, row)
    revoked = 0
    now = utcnow()
    for cert in old:
        if cert.state in _LIVE_CERTS:
            transition(
                session,
                cert,
                "revoke",
                actor=actor,
                reason=f"superseded by renewal (update {row.id})",
                changes={
                    "revoked_at": now,
                    "revocation_reason": RevocationReason.SUPERSEDED.value,
                    "on_chip": False,
                },
            )
            revoked += 1
        else:
            record(session, cert, "erase", actor=actor, changes={"on_chip": False})
    _applied(session, row, reason="read back from the chip", actor=actor, at=now)
    if revoked:
        outbox.add(session, PublishCrl(reason=f"renewal of card {row.credential_id}"))
    return revoked


def release(session: Session, row: CardUpdate, *, station_id: str, reason: str) -> None:
    """The card left the desk before the update was done: back to ``pending``, journal
    kept, to resume at the next insertion."""
    transition(
        session,
        row,
        "release",
        actor=f"station:{station_id}",
        reason=reason[:500],
        changes={"station_id": None, "lease_expires_at": None},
    )


def fail(session: Session, row: CardUpdate, *, station_id: str, error: str) -> None:
    """The chip refused the update (a fault of the card): ``failed``. The certificates
    issued for it and never on the chip are revoked; what the chip still carries is
    what the store says it carries."""
    actor = f"station:{station_id}"
    now = utcnow()
    issued = session.scalars(
        select(Certificate).where(
            Certificate.update_id == row.id, Certificate.state.in_(_LIVE_CERTS)
        )
    ).all()
    for cert in issued:
        if not cert.on_chip:
            transition(
                session,
                cert,
                "revoke",
                actor=actor,
                reason=f"update {row.id} failed",
                changes={
                    "revoked_at": now,
                    "revocation_reason": RevocationReason.CESSATION_OF_OPERATION.value,
                },
            )
    transition(
        session,
        row,
        "fail",
        actor=actor,
        reason=error[:500],
        changes={"error": error[:500], "lease_expires_at": None},
    )


def cancel_open(session: Session, credential_id: int, *, by: str, reason: str) -> int:
    """Cancel the card's pending updates (the card is locked or gone); an update in
    progress at a desk is left to finish or fail there. Returns how many."""
    count = 0
    for row in open_updates(session, credential_id):
        if row.state == UpdateState.PENDING:
            transition(session, row, "cancel", actor=by, reason=reason)
            count += 1
    return count


def card_with_pending(session: Session, *, limit: int = 100) -> list[tuple[int, str]]:
    """(credential id, chip serial) of produced cards with an update waiting, oldest
    update first: what the embedded line's simulated holders bring to the desk."""
    now = utcnow()
    rows = session.execute(
        select(Credential.id, Credential.chip_serial)
        .join(CardUpdate, CardUpdate.credential_id == Credential.id)
        .where(
            Credential.chip_serial.is_not(None),
            or_(
                CardUpdate.state == UpdateState.PENDING,
                (CardUpdate.state == UpdateState.IN_PROGRESS) & (CardUpdate.lease_expires_at < now),
            ),
        )
        .order_by(CardUpdate.id)
        .limit(limit)
    ).all()
    seen: dict[int, str] = {}
    for cred_id, serial in rows:
        if serial is not None:
            seen.setdefault(cred_id, serial)
    return list(seen.items())
