"""Key escrow: recover earlier encryption keys onto a new card, or out as a PFX.

``request_key_recovery`` marks a card not yet produced so that its station also writes
the holder's earlier escrowed encryption keys (with their certificates) to it, or, for
a card in use, creates a card update writing the keys the operator chose; mail
encrypted to an old key still opens with the new card. ``escrowed_key`` hands the
escrowed key of one card to the PFX export (the user portal's "download escrowed
certificates"); both are audited, and neither ever logs or returns a key unsealed
except to the caller that asked.

Under dual control (``[approvals] escrow_export``) an export is first an approval
request (process ``escrow.export``, no parameters: nothing secret is ever stored). An
approver's approval is the grant; its requester, and only they, then collects the key
once with that request's id, which is marked ``collect``-ed in the transaction that
audits the export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import updates
from db.engine import Store
from db.models import ApprovalRequest, AuditEvent, Certificate, Credential
from db.secrets import Secret, SecretBox, context
from db.transition import record
from producers.lookup import find_card
from producers.principals import same_principal
from schemas.errors import NotFound, PermanentError, Refused, StateConflict, ValidationFailed
from schemas.policy import ApprovalSteps, Policy
from schemas.states import CardState, CertUsage, CredentialKind, RequestState

EXPORT = "escrow.export"  # the use case, and the process its approval step holds
COLLECT = "collect"  # the audited action that spends an approved export request

# A card can still take recovered keys until a station starts on it ...
RECOVERABLE_STATES = frozenset({CardState.REQUESTED, CardState.APPROVED, CardState.READY})
# ... and once in its holder's hands, through a card update applied at a desk.
IN_USE_STATES = frozenset({CardState.ACTIVE, CardState.ISSUED, CardState.INACTIVE})


@dataclass(frozen=True)
class EscrowExport:
    card_number: str
    holder: str
    key_pem: Secret
    cert_pem: str


def request_key_recovery(store: Store, card: str, *, by: str, serials: Sequence[str] = ()) -> int:
    """Have card ``card`` (number or id) carry its holder's earlier escrowed keys;
    returns how many it will carry. A card not yet produced carries all of them (its
    station writes them). A produced card in use gets the keys named by certificate
    serial (``serials``; all when empty) through a card update, written when it is
    next at an update desk. Only a permanent card."""
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        # A temporary card is produced for no holder, so it carries no holder's keys.
        allowed = (
            RECOVERABLE_STATES | IN_USE_STATES if cred.kind == CredentialKind.CARD else frozenset()
        )
        if cred.state not in allowed:
            raise StateConflict(cred.machine.name, cred.id, "recover_escrow", cred.state, allowed)
        if cred.user_id is None:
            raise PermanentError(f"card {card} has no holder, so no earlier keys to recover")
        if cred.state in IN_USE_STATES:
            row = updates.request_recovery(s, cred, by=by, serials=serials)
            return len(row.plan["keys"])
        if serials:
            raise ValidationFailed(
                "a card not yet produced carries all its holder's escrowed keys; "
                "choose keys once it is in use",
                field="keys",
            )
        earlier = s.scalars(
            select(Credential.id).where(
                Credential.user_id == cred.user_id,
                Credential.id != cred.id,
                Credential.escrow_key_sealed.is_not(None),
            )
        ).all()
        if not earlier:
            raise PermanentError(f"the holder of card {card} has no escrowed keys to recover")
        record(
            s,
            cred,
            "recover_escrow",
            actor=by,
            reason=f"{len(earlier)} earlier escrowed keys to write",
            changes={"recover_escrow": True},
        )
        return len(earlier)


def holder_keys(store: Store, card: str) -> list[updates.EscrowedKey]:
    """The escrowed keys of card ``card``'s holder from their other cards (to choose
    from for a recovery); nothing secret is read."""
    with store.read() as s:
        return updates.holder_escrowed_keys(s, find_card(s, card))


def _exportable(s: Session, card: str) -> tuple[Credential, Certificate]:
    """Card ``card`` and its escrowed key's newest certificate; PermanentError when it
    has no escrowed key, or no certificate for it yet."""
    cred = find_card(s, card)
    if cred.escrow_key_sealed is None:
        raise PermanentError(f"card {card} has no escrowed key")
    cert = s.scalars(
        select(Certificate)
        .where(
            Certificate.credential_id == cred.id,
            Certificate.attempt_id.is_(None),
            Certificate.usage == CertUsage.ENCRYPTION,
        )
        .order_by(Certificate.id.desc())
    ).first()
    if cert is None:
        raise PermanentError(f"card {card}'s escrowed key has no certificate yet")
    return cred, cert


def grant_export_in(s: Session, card: str, _params: Any, _by: str, _policy: Policy) -> str:
    """The ``escrow.export`` process: approving it is the grant, so it only checks that
    the card has a key to export (refused at request time, failed at approval time
    otherwise). The key itself is collected later by the requester (``escrowed_key``)."""
    _exportable(s, card)
    return "collectable once by its requester (`cardline escrow export --request`)"


def _collect_in(s: Session, request_id: int, cred: Credential, *, by: str) -> None:
    """Spend approved export request ``request_id``: Refused unless it is an approved
    ``escrow.export`` of this card, requested by ``by`` and not collected before."""
    row = s.get(ApprovalRequest, request_id, with_for_update=True)
    if row is None or row.process != EXPORT:
        raise NotFound("escrow export request", request_id)
    if not same_principal(by, row.requested_by):
        raise Refused(f"request {request_id} is {row.requested_by}'s; only they may collect it")
    if row.target != str(cred.id):
        raise Refused(f"request {request_id} is for card {row.target}, not card {cred.id}")
    collected = s.scalar(
        select(AuditEvent.seq).where(
            AuditEvent.entity == row.machine.name,
            AuditEvent.entity_id == str(row.id),
            AuditEvent.action == COLLECT,
        )
    )
    if row.state != RequestState.APPROVED or collected is not None:
        state = "collected" if collected is not None else row.state
        raise StateConflict(row.machine.name, row.id, COLLECT, state, (RequestState.APPROVED,))
    # Guarded by the row's version: of two collections at once, one wins.
    record(
        s,
        row,
        COLLECT,
        actor=by,
        expect=(RequestState.APPROVED,),
        reason=f"escrowed key of card {cred.id} collected as PFX",
        changes={"outcome": f"collected by {by}"},
    )


def escrowed_key(
    store: Store,
    box: SecretBox,
    card: str,
    *,
    by: str,
    steps: ApprovalSteps,
    request_id: int | None = None,
) -> EscrowExport:
    """The escrowed encryption key of card ``card`` and its newest certificate (audited).
    Under ``[approvals] escrow_export`` only with ``request_id``, an approved export
    request of ``by`` for this card, which is spent in the same transaction."""
    with store.tx() as s:
        cred, cert = _exportable(s, card)
        if request_id is not None:
            _collect_in(s, request_id, cred, by=by)
        elif steps.required(EXPORT):
            raise Refused(
                "escrow exports are under dual control ([approvals] escrow_export): "
                "request one, have an approver approve it, then collect it with --request"
            )
        # An audited read: the row itself does not change (only its version moves).
        record(
            s,
            cred,
            "escrow_export",
            actor=by,
            reason=f"escrowed key exported as PFX (certificate {cert.serial})"
            + (f", request {request_id}" if request_id is not None else ""),
        )
        sealed, number = cred.escrow_key_sealed, cred.card_number or str(cred.id)
        assert sealed is not None  # _exportable checked it
        holder = cred.user.display_name if cred.user else f"card {number}"
        cert_pem = cert.pem
    key = box.open(sealed, context=context("credential", cred.id, "escrow_key"))
    return EscrowExport(card_number=number, holder=holder, key_pem=key, cert_pem=cert_pem)
