"""Key escrow: recover earlier encryption keys onto a new card, or out as a PFX.

``request_key_recovery`` marks a card not yet produced so that its station also writes
the holder's earlier escrowed encryption keys (with their certificates) to it; mail
encrypted to an old key still opens with the new card. ``escrowed_key`` hands the
escrowed key of one card to the PFX export (the user portal's "download escrowed
certificates"); both are audited, and neither ever logs or returns a key unsealed
except to the caller that asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from db.engine import Store
from db.models import Certificate, Credential
from db.secrets import Secret, SecretBox, context
from db.transition import record
from producers.lookup import find_card
from schemas.errors import PermanentError, StateConflict
from schemas.states import CardState, CertUsage

# A card can still take recovered keys until a station starts on it.
RECOVERABLE_STATES = frozenset({CardState.REQUESTED, CardState.APPROVED, CardState.READY})


@dataclass(frozen=True)
class EscrowExport:
    card_number: str
    holder: str
    key_pem: Secret
    cert_pem: str


def request_key_recovery(store: Store, card: str, *, by: str) -> int:
    """Have card ``card`` (number or id) carry its holder's earlier escrowed keys;
    returns how many it will carry. Only before production starts."""
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        if cred.state not in RECOVERABLE_STATES:
            raise StateConflict(
                cred.machine.name, cred.id, "recover_escrow", cred.state, RECOVERABLE_STATES
            )
        if cred.user_id is None:
            raise PermanentError(f"card {card} has no holder, so no earlier keys to recover")
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


def escrowed_key(store: Store, box: SecretBox, card: str, *, by: str) -> EscrowExport:
    """The escrowed encryption key of card ``card`` and its newest certificate (audited)."""
    with store.tx() as s:
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
        # An audited read: the row itself does not change (only its version moves).
        record(
            s,
            cred,
            "escrow_export",
            actor=by,
            reason=f"escrowed key exported as PFX (certificate {cert.serial})",
        )
        sealed, number = cred.escrow_key_sealed, cred.card_number or str(cred.id)
        holder = cred.user.display_name if cred.user else f"card {number}"
        cert_pem = cert.pem
    key = box.open(sealed, context=context("credential", cred.id, "escrow_key"))
    return EscrowExport(card_number=number, holder=holder, key_pem=key, cert_pem=cert_pem)
