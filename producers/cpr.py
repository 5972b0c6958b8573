"""CPR intake (seed 000): an identity system's signed card production request becomes a
user (created or updated) and a card request, in one transaction, or nothing at all.

The flows: the signature must verify against the identity system's configured
certificate, over the payload bytes as received; the user is found by external id,
then e-mail, and created when unknown (if ``create_users``); a user's earlier CPR is
replaced, and with it the user's attributes; a user who already has an issuance
request in progress makes the CPR fail with ``AlreadyExists`` (the identity system
cancels that request first); anything refused stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import CardProductionRequest, Credential, User, utcnow
from producers.cards import new_cards_in
from producers.users import create_in, update_in, validated
from schemas.cpr import Cpr, CprConfig, CprOutcome, SignedCpr
from schemas.errors import AlreadyExists, ConfigurationError, InvalidCpr, NotFound
from schemas.policy import Policy
from schemas.states import CardState, CredentialKind, UserState

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# Card states in which an issuance request is still in progress.
_IN_PROGRESS = (CardState.REQUESTED, CardState.APPROVED, CardState.READY, CardState.PRODUCING)


def load_identity_systems(config: CprConfig) -> dict[str, PublicKey]:
    """Each configured identity system's public key, read from its certificate."""
    keys: dict[str, PublicKey] = {}
    for name, system in config.identity_systems.items():
        try:
            cert = x509.load_pem_x509_certificate(Path(system.certificate).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cpr.identity_systems.{name}.certificate {system.certificate}: {exc}"
            ) from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ConfigurationError(
                f"cpr.identity_systems.{name}: only RSA and EC signing keys are supported"
            )
        keys[name] = key
    return keys


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCpr(f"the {what} is not base64url") from None


def verify(signed: SignedCpr, keys: dict[str, PublicKey]) -> tuple[Cpr, bytes]:
    """The CPR, once its signature verifies; ``InvalidCpr`` says why it does not."""
    key = keys.get(signed.signer)
    if key is None:
        raise InvalidCpr(f"{signed.signer!r} is not a configured identity system")
    payload = _b64(signed.payload, "payload")
    signature = _b64(signed.signature, "signature")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise InvalidCpr(f"the signature does not verify with {signed.signer}'s key") from None
    try:
        cpr = Cpr.model_validate(json.loads(payload.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidCpr("the signed payload is not UTF-8 JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidCpr(f"the CPR cannot be stored: {where}: {first['msg']}") from None
    if cpr.identity_system != signed.signer:
        raise InvalidCpr(f"signed by {signed.signer} but names {cpr.identity_system}")
    return cpr, payload


def _find_user(session: Session, cpr: Cpr) -> User | None:
    email = cpr.user.email.strip().lower()
    by_id = None
    if cpr.user.external_id:
        by_id = session.scalars(
            select(User).where(User.external_id == cpr.user.external_id).with_for_update()
        ).first()
    sharing = session.scalars(select(User).where(User.email == email).with_for_update()).all()
    if len(sharing) > 1 and by_id is None:
        raise InvalidCpr("several users have this e-mail; the CPR must carry the external id")
    by_email = by_id if len(sharing) > 1 else (sharing[0] if sharing else None)
    if by_id is not None and by_email is not None and by_id.id != by_email.id:
        raise InvalidCpr(
            f"the external id belongs to user {by_id.id} but the e-mail to user {by_email.id}"
        )
    return by_id or by_email


def _open_request(session: Session, user: User) -> Credential | None:
    return session.scalars(
        select(Credential).where(
            Credential.user_id == user.id,
            Credential.kind == CredentialKind.CARD,
            Credential.state.in_(_IN_PROGRESS),
        )
    ).first()


def _keep(session: Session, user: User, signed: SignedCpr, cpr: Cpr, payload: bytes) -> bool:
    """Store the CPR for ``user``, replacing an earlier one; True when it replaced."""
    row = session.scalars(
        select(CardProductionRequest).where(CardProductionRequest.user_id == user.id)
    ).first()
    values = {
        "identity_system": cpr.identity_system,
        "request_id": cpr.request_id,
        "payload": payload.decode("utf-8"),
        "signature": signed.signature,
        "received_at": utcnow(),
    }
    if row is None:
        session.add(CardProductionRequest(user_id=user.id, replaced=0, **values))
        return False
    for name, value in values.items():
        setattr(row, name, value)
    row.replaced += 1
    return True


def intake(
    store: Store,
    signed: SignedCpr,
    *,
    keys: dict[str, PublicKey],
    config: CprConfig,
    policy: Policy,
    by: str,
) -> CprOutcome:
    """Verify the CPR and turn it into a user and a card request, submitted by the
    principal ``by`` (the audit log and ``requested_by`` record it; the reason names
    the identity system and its request id)."""
    cpr, payload = verify(signed, keys)
    actor = by
    attributes = cpr.user.model_dump()
    row = validated(attributes)
    why = f"CPR {cpr.request_id} of {cpr.identity_system}"
    with store.tx() as s:
        user = _find_user(s, cpr)
        created = user is None
        if user is None:
            if not config.create_users:
                raise NotFound("user (and CPRs may not create users)", cpr.user.email)
            user = create_in(
                s, row, by=actor, state=UserState.ACTIVE, why=why, unique_email=policy.email_unique
            )
        else:
            if user.state != UserState.ACTIVE:
                raise InvalidCpr(f"user {user.id} is {user.state}; no card can be issued")
            open_request = _open_request(s, user)
            if open_request is not None:
                raise AlreadyExists(
                    f"an issuance request already exists for {user.email}: card "
                    f"{open_request.id} is {open_request.state}; cancel it, then send the "
                    "CPR again"
                )
            update_in(
                s,
                user,
                attributes,
                by=actor,
                why=f"{why} replaced",
                unique_email=policy.email_unique,
            )
        replaced = _keep(s, user, signed, cpr, payload)
        (card_id,) = new_cards_in(
            s,
            [str(user.id)],
            by=actor,
            policy=policy,
            line=cpr.line or policy.default_line,
            approved=not config.approval_required,
            why=why,
        )
        card = s.get(Credential, card_id)
        assert card is not None
        return CprOutcome(
            user_id=user.id,
            card_id=card_id,
            card_state=card.state,
            user_created=created,
            cpr_replaced=replaced,
        )
