"""CPR intake (seed 000): an identity system's signed card production request becomes a
user (created or updated) and a card request, in one transaction, or nothing at all.

The flows: the signature must verify against the identity system's configured
certificate (a strong key, inside its validity period), over the payload bytes as
received (a key repeated in them is refused); only a principal configured for that
identity system may submit its CPRs; the signed ``issued_at`` must lie inside ``[cpr]
max_age_s`` (and ``max_skew_s`` ahead); a request id is accepted once, for ever
(``cpr_receipts``), and a CPR older than the newest one accepted for the user from the
same system is refused. The user is found by external id, then e-mail, and created
when unknown (if ``create_users``); a user that an operator, an import or another
identity system created is updated only with ``take_over_users``; an update changes
only the attributes the CPR carries; a user's earlier CPR is replaced; a user who
already has an issuance request in progress makes the CPR fail with
``AlreadyExists`` (the identity system cancels that request first); anything refused
stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import AuditEvent, CardProductionRequest, CprReceipt, Credential, User, utcnow
from producers.cards import new_cards_in
from producers.principals import Caller, normalise_name
from producers.users import create_in, update_in, validated
from schemas.cpr import Cpr, CprConfig, CprOutcome, SignedCpr
from schemas.errors import (
    AlreadyExists,
    ConfigurationError,
    ConflictError,
    InvalidCpr,
    NotFound,
    Refused,
    ValidationFailed,
)
from schemas.policy import Policy
from schemas.states import CardState, CredentialKind, UserState

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# Card states in which an issuance request is still in progress.
_IN_PROGRESS = (CardState.REQUESTED, CardState.APPROVED, CardState.READY, CardState.PRODUCING)
# The weakest keys an identity system may sign with (bits of the RSA modulus, of the
# EC curve's order: P-256 and up).
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256


@dataclass(frozen=True)
class TrustedSystem:
    """A configured identity system as loaded: the key its CPRs verify with, its
    certificate's validity period, and the (normalised) names of the principals that
    may submit its CPRs."""

    name: str
    key: PublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    principals: frozenset[str]


def _at(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _weakness(key: PublicKey) -> str | None:
    """Why ``key`` is too weak to sign CPRs, or None."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"a {key.key_size}-bit RSA key (at least {MIN_RSA_BITS} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_EC_BITS:
        return f"an EC key on {key.curve.name} (at least P-256)"
    return None


def _out_of_date(system: TrustedSystem, now: dt.datetime) -> str | None:
    """Why the system's certificate is not valid at ``now``, or None."""
    if now < system.not_before:
        return f"{system.name}'s certificate is not valid before {_at(system.not_before)}"
    if now > system.not_after:
        return f"{system.name}'s certificate expired at {_at(system.not_after)}"
    return None


def _principals(name: str, names: tuple[str, ...]) -> frozenset[str]:
    try:
        return frozenset(normalise_name(n, field="principals") for n in names)
    except ValidationFailed as exc:
        raise ConfigurationError(f"cpr.identity_systems.{name}.principals: {exc}") from None


def _load(name: str, certificate: Path, principals: tuple[str, ...]) -> TrustedSystem:
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cpr.identity_systems.{name}.certificate {certificate}: {exc}"
        ) from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            f"cpr.identity_systems.{name}: only RSA and EC signing keys are supported"
        )
    weakness = _weakness(key)
    if weakness is not None:
        raise ConfigurationError(f"cpr.identity_systems.{name}: the certificate has {weakness}")
    return TrustedSystem(
        name=name,
        key=key,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        principals=_principals(name, principals),
    )


def load_identity_systems(config: CprConfig) -> dict[str, TrustedSystem]:
    """Each configured identity system, read from its certificate; ConfigurationError
    naming the system for a certificate that is unreadable, has a weak key, or is
    outside its validity period now."""
    systems: dict[str, TrustedSystem] = {}
    for name, configured in config.identity_systems.items():
        system = _load(name, configured.certificate, configured.principals)
        stale = _out_of_date(system, utcnow())
        if stale is not None:
            raise ConfigurationError(f"cpr.identity_systems.{name}: {stale}")
        systems[name] = system
    return systems


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCpr(f"the {what} is not base64url") from None


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key repeats (``json`` would keep the last)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidCpr(f"the signed payload has a repeated key {key!r}")
        seen[key] = value
    return seen


def _parse(payload: bytes) -> Cpr:
    try:
        data = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_repeated_keys)
        return Cpr.model_validate(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidCpr("the signed payload is not UTF-8 JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidCpr(f"the CPR cannot be stored: {where}: {first['msg']}") from None


def trusted(signed: SignedCpr, systems: dict[str, TrustedSystem]) -> TrustedSystem:
    """The configured identity system that ``signed`` says signed it."""
    system = systems.get(signed.signer)
    if system is None:
        raise InvalidCpr(f"{signed.signer!r} is not a configured identity system")
    return system


def verify(
    signed: SignedCpr, systems: dict[str, TrustedSystem], *, now: dt.datetime | None = None
) -> tuple[Cpr, bytes]:
    """The CPR, once its signature verifies with a certificate valid ``now``;
    ``InvalidCpr`` says why it does not."""
    system = trusted(signed, systems)
    stale = _out_of_date(system, now or utcnow())
    if stale is not None:
        raise InvalidCpr(stale)
    payload = _b64(signed.payload, "payload")
    signature = _b64(signed.signature, "signature")
    try:
        if isinstance(system.key, rsa.RSAPublicKey):
            system.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            system.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise InvalidCpr(f"the signature does not verify with {signed.signer}'s key") from None
    cpr = _parse(payload)
    if cpr.identity_system != signed.signer:
        raise InvalidCpr(f"signed by {signed.signer} but names {cpr.identity_system}")
    return cpr, payload


def _check_submitter(system: TrustedSystem, caller: Caller) -> None:
    if caller.name not in system.principals:
        raise Refused(
            f"{caller.name} may not submit CPRs of {system.name}: it is not among "
            f"[cpr.identity_systems.{system.name}] principals"
        )


def _check_issued(cpr: Cpr, config: CprConfig, now: dt.datetime) -> None:
    """The CPR's signed issue time lies inside the configured window around ``now``."""
    age = (now - cpr.issued_at).total_seconds()
    what = f"CPR {cpr.request_id} of {cpr.identity_system} was issued at {_at(cpr.issued_at)}"
    if age > config.max_age_s:
        raise InvalidCpr(f"{what}, older than {config.max_age_s} s ([cpr] max_age_s)")
    if -age > config.max_skew_s:
        raise InvalidCpr(
            f"{what}, in the future (more than {config.max_skew_s} s ahead of {_at(now)})"
        )


def _check_unseen(session: Session, cpr: Cpr) -> None:
    """A request id is accepted once, for ever. Intake's transaction holds the audit
    head lock, so the receipt of any earlier intake is committed and visible here;
    the unique constraint on the receipts is the backstop."""
    seen = session.scalars(
        select(CprReceipt).where(
            CprReceipt.identity_system == cpr.identity_system,
            CprReceipt.request_id == cpr.request_id,
        )
    ).first()
    if seen is not None:
        raise AlreadyExists(
            f"CPR {cpr.request_id} of {cpr.identity_system} was received before, at "
            f"{_at(seen.received_at)}; a request id is accepted once"
        )


def _check_newest(session: Session, user: User, cpr: Cpr) -> None:
    """No CPR older than the newest one accepted for ``user`` from the same system."""
    newest = session.scalar(
        select(func.max(CprReceipt.issued_at)).where(
            CprReceipt.user_id == user.id, CprReceipt.identity_system == cpr.identity_system
        )
    )
    if newest is not None and newest > cpr.issued_at:
        raise ConflictError(
            f"CPR {cpr.request_id} of {cpr.identity_system} was issued at "
            f"{_at(cpr.issued_at)}, before the CPR already accepted for user {user.id}, "
            f"issued at {_at(newest)}; an older CPR never replaces a newer one"
        )


def _source(cpr: Cpr) -> str:
    return f"cpr:{cpr.identity_system}"


def _owner(session: Session, user: User) -> str:
    """Who created ``user``, as a person reads it."""
    if user.source is not None and user.source.startswith("cpr:"):
        return f"identity system {user.source.removeprefix('cpr:')}"
    created = session.scalars(
        select(AuditEvent).where(
            AuditEvent.entity == "user",
            AuditEvent.entity_id == str(user.id),
            AuditEvent.action == "create",
        )
    ).first()
    if created is None:
        return user.source or "an unknown source"
    return f"{created.actor} ({created.reason or 'no reason given'})"


def _check_owner(session: Session, user: User, cpr: Cpr, config: CprConfig) -> None:
    if user.source == _source(cpr) or config.take_over_users:
        return
    raise ConflictError(
        f"user {user.id} was created by {_owner(session, user)}, not by identity system "
        f"{cpr.identity_system}; a CPR updates only its own system's users unless "
        "[cpr] take_over_users = true"
    )


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


def _receive(session: Session, user: User, cpr: Cpr, by: str) -> None:
    session.add(
        CprReceipt(
            identity_system=cpr.identity_system,
            request_id=cpr.request_id,
            user_id=user.id,
            issued_at=cpr.issued_at,
            received_at=utcnow(),
            submitted_by=by,
        )
    )


def _update(
    session: Session, user: User, cpr: Cpr, *, by: str, config: CprConfig, policy: Policy
) -> None:
    """Update a known user from ``cpr``: only its own system's user (unless configured
    otherwise), active, without an issuance in progress, from a CPR no older than the
    last one; only the attributes the CPR carries change."""
    _check_owner(session, user, cpr, config)
    if user.state != UserState.ACTIVE:
        raise InvalidCpr(f"user {user.id} is {user.state}; no card can be issued")
    _check_newest(session, user, cpr)
    open_request = _open_request(session, user)
    if open_request is not None:
        raise AlreadyExists(
            f"an issuance request already exists for {user.email}: card "
            f"{open_request.id} is {open_request.state}; cancel it, then send the "
            "CPR again"
        )
    update_in(
        session,
        user,
        cpr.user.model_dump(exclude_unset=True),
        by=by,
        why=f"CPR {cpr.request_id} of {cpr.identity_system} replaced",
        unique_email=policy.email_unique,
    )


def intake(
    store: Store,
    signed: SignedCpr,
    *,
    keys: dict[str, TrustedSystem],
    config: CprConfig,
    policy: Policy,
    caller: Caller,
) -> CprOutcome:
    """Verify the CPR and turn it into a user and a card request, submitted by
    ``caller``, who must be one of the identity system's configured principals (the
    audit log and ``requested_by`` record its actor; the reason names the identity
    system and its request id)."""
    now = utcnow()
    _check_submitter(trusted(signed, keys), caller)
    cpr, payload = verify(signed, keys, now=now)
    _check_issued(cpr, config, now)
    actor = caller.actor
    row = validated(cpr.user.model_dump())
    why = f"CPR {cpr.request_id} of {cpr.identity_system}"
    with store.tx() as s:
        _check_unseen(s, cpr)
        user = _find_user(s, cpr)
        created = user is None
        if user is None:
            if not config.create_users:
                raise NotFound("user (and CPRs may not create users)", cpr.user.email)
            user = create_in(
                s, row, by=actor, state=UserState.ACTIVE, why=why, unique_email=policy.email_unique
            )
            # Part of the creation the event above records (its reason names the CPR).
            user.source = _source(cpr)
        else:
            _update(s, user, cpr, by=actor, config=config, policy=policy)
        replaced = _keep(s, user, signed, cpr, payload)
        _receive(s, user, cpr, actor)
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
