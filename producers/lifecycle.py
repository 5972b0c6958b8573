"""Card and user life after production, and what it does to their certificates.

Deactivating a card puts its certificates on hold; reactivating releases them; locking
revokes them for good. For a user the same cascades over the user's cards and soft
tokens: deactivate puts every active card out of use, reactivate brings back exactly
what the user's deactivation put out (not a card an operator deactivated on its own),
lock locks or cancels every card and revokes or cancels every soft token. Both take
back the temporary cards the user holds (withdrawn: certificates revoked, chip wiped at
its next desk); reactivating the user does not give them back.

Each operation is one transaction: every ``transition()`` of the user, its cards and
its certificates, and one ``PublishCrl``; a conflict anywhere changes nothing. Work a
station has in hand cannot be stopped half-way, so a user with a card being produced
is refused until the station finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import outbox
from db.engine import Store
from db.models import AuditEvent, Certificate, Credential, SoftToken, User, utcnow
from db.transition import transition
from producers import tempcards
from producers.lookup import find_card, find_user
from schemas.errors import PermanentError, ValidationFailed
from schemas.messages import PublishCrl
from schemas.states import (
    LOCK_REASONS,
    CardState,
    CertState,
    CredentialKind,
    RevocationReason,
    SoftTokenState,
    TempCardState,
    UserState,
)

# The mark on a card's or certificate's audit event that a user's deactivation did it.
_BY_USER = "user deactivated"
_NOT_YET_PRODUCED = (CardState.REQUESTED, CardState.APPROVED, CardState.READY)


def _reason(reason: str | None, default: str, reasons: Sequence[str] = ()) -> str:
    """The reason given (``default`` if none); with a configured list of ``reasons``
    (``Policy.deactivation_reasons``) it must be one of them."""
    text = (reason or "").strip()
    if reasons:
        chosen = {r.casefold(): r for r in reasons}.get(text.casefold())
        if chosen is None:
            raise ValidationFailed(f"choose one of: {'; '.join(reasons)}", field="reason")
        return chosen
    text = text or default
    if len(text) > 400:
        raise ValidationFailed("a reason is at most 400 characters", field="reason")
    return text


def _certificates(
    session: Session, *, states: Iterable[str], card: int | None = None, token: int | None = None
) -> Sequence[Certificate]:
    stmt = select(Certificate).where(Certificate.state.in_(list(states)))
    if card is not None:
        stmt = stmt.where(Certificate.credential_id == card)
    if token is not None:
        stmt = stmt.where(Certificate.soft_token_id == token)
    return session.scalars(stmt.order_by(Certificate.id)).all()


def _hold(session: Session, certs: Iterable[Certificate], *, by: str, reason: str) -> int:
    count = 0
    for cert in certs:
        transition(session, cert, "hold", actor=by, reason=reason)
        count += 1
    return count


def _release(session: Session, certs: Iterable[Certificate], *, by: str, reason: str) -> int:
    count = 0
    for cert in certs:
        transition(session, cert, "release", actor=by, reason=reason)
        count += 1
    return count


def _revoke(
    session: Session, certs: Iterable[Certificate], *, by: str, reason: RevocationReason
) -> int:
    count = 0
    for cert in certs:
        transition(
            session,
            cert,
            "revoke",
            actor=by,
            reason=reason,
            changes={"revoked_at": utcnow(), "revocation_reason": reason},
        )
        count += 1
    return count


def _crl(session: Session, changed: int, why: str) -> None:
    if changed:
        outbox.add(session, PublishCrl(reason=why))


def _last_event(session: Session, entity: str, entity_id: int) -> AuditEvent | None:
    return session.scalars(
        select(AuditEvent)
        .where(AuditEvent.entity == entity, AuditEvent.entity_id == str(entity_id))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()


def _put_out_by(session: Session, entity: str, entity_id: int, mark: str) -> bool:
    """Whether the last thing done to the row was done with a reason starting ``mark``."""
    last = _last_event(session, entity, entity_id)
    return last is not None and (last.reason or "").startswith(mark)


def _put_out_by_user(session: Session, entity: str, entity_id: int) -> bool:
    return _put_out_by(session, entity, entity_id, _BY_USER)


def _lock_reason(reason: RevocationReason | str) -> RevocationReason:
    try:
        chosen = RevocationReason(reason)
    except ValueError:
        chosen = None
    if chosen not in LOCK_REASONS:
        raise ValidationFailed(
            f"choose a revocation reason from {', '.join(LOCK_REASONS)}", field="reason"
        )
    assert chosen is not None
    return chosen


# --- cards ---------------------------------------------------------------------------


def deactivate_card_in(session: Session, cred: Credential, *, by: str, reason: str) -> int:
    transition(session, cred, "deactivate", actor=by, reason=reason)
    certs = _certificates(session, states=[CertState.VALID], card=cred.id)
    held = _hold(session, certs, by=by, reason=reason)
    _crl(session, held, f"card {cred.id} deactivated")
    return held


def deactivate_card(
    store: Store,
    card: str,
    *,
    by: str,
    reason: str | None = None,
    reasons: Sequence[str] = (),
) -> int:
    """``active -> inactive``; its valid certificates go on hold. Returns how many."""
    with store.tx() as s:
        return deactivate_card_at(s, card, by=by, reason=reason, reasons=reasons)


def deactivate_card_at(
    s: Session, card: str, *, by: str, reason: str | None, reasons: Sequence[str] = ()
) -> int:
    """``deactivate_card`` inside the caller's transaction."""
    why = _reason(reason, "card deactivated", reasons)
    return deactivate_card_in(s, find_card(s, card, lock=True), by=by, reason=why)


def reactivate_card_in(session: Session, cred: Credential, *, by: str, reason: str) -> int:
    # Only a card that could be reactivated is turned away for its holder's sake; any
    # other (a locked card, a temporary card) is refused by transition(), naming its state.
    may = cred.machine.target(cred.state, "reactivate") is not None
    if may and cred.user is not None and cred.user.state != UserState.ACTIVE:
        raise PermanentError(
            f"card {cred.id} belongs to {cred.user.email}, who is {cred.user.state}; "
            "reactivate the user instead"
        )
    transition(session, cred, "reactivate", actor=by, reason=reason)
    certs = _certificates(session, states=[CertState.HOLD], card=cred.id)
    released = _release(session, certs, by=by, reason=reason)
    _crl(session, released, f"card {cred.id} reactivated")
    return released


def undo_deactivation_in(
    session: Session, cred: Credential, *, mark: str, by: str, reason: str
) -> int:
    """Undo a deactivation whose reasons began with ``mark``: the card in use again if
    that deactivation put it out of use, and the certificates it put on hold released.
    A card or certificate put out of use by anything else stays as it is. Returns how
    many certificates were released."""
    if cred.state != CardState.INACTIVE or not _put_out_by(
        session, cred.machine.name, cred.id, mark
    ):
        return 0
    if cred.user is not None and cred.user.state != UserState.ACTIVE:
        raise PermanentError(
            f"card {cred.id} belongs to {cred.user.email}, who is {cred.user.state}; "
            "reactivate the user first"
        )
    transition(session, cred, "reactivate", actor=by, reason=reason)
    certs = [
        c
        for c in _certificates(session, states=[CertState.HOLD], card=cred.id)
        if _put_out_by(session, "certificate", c.id, mark)
    ]
    released = _release(session, certs, by=by, reason=reason)
    _crl(session, released, f"card {cred.id} reactivated")
    return released


def reactivate_card(
    store: Store,
    card: str,
    *,
    by: str,
    reason: str | None = None,
    reasons: Sequence[str] = (),
) -> int:
    """``inactive -> active``; its held certificates are released. Returns how many."""
    with store.tx() as s:
        return reactivate_card_at(s, card, by=by, reason=reason, reasons=reasons)


def reactivate_card_at(
    s: Session, card: str, *, by: str, reason: str | None, reasons: Sequence[str] = ()
) -> int:
    """``reactivate_card`` inside the caller's transaction."""
    why = _reason(reason, "card reactivated", reasons)
    return reactivate_card_in(s, find_card(s, card, lock=True), by=by, reason=why)


def lock_card_in(
    session: Session, cred: Credential, *, by: str, reason: RevocationReason | str
) -> int:
    why = _lock_reason(reason)
    transition(session, cred, "lock", actor=by, reason=why)
    certs = _certificates(session, states=[CertState.VALID, CertState.HOLD], card=cred.id)
    revoked = _revoke(session, certs, by=by, reason=why)
    _crl(session, revoked, f"card {cred.id} locked")
    return revoked


def lock_card(store: Store, card: str, *, by: str, reason: RevocationReason | str) -> int:
    """Lock the card for good; its valid and held certificates are revoked."""
    with store.tx() as s:
        return lock_card_at(s, card, by=by, reason=reason)


def lock_card_at(s: Session, card: str, *, by: str, reason: RevocationReason | str) -> int:
    """``lock_card`` inside the caller's transaction."""
    why = _lock_reason(reason)
    return lock_card_in(s, find_card(s, card, lock=True), by=by, reason=why)


# --- users ---------------------------------------------------------------------------


def _cards_of(session: Session, user: User) -> Sequence[Credential]:
    return session.scalars(
        select(Credential)
        .where(Credential.user_id == user.id)
        .order_by(Credential.id)
        .with_for_update()
    ).all()


def _tokens_of(session: Session, user: User) -> Sequence[SoftToken]:
    return session.scalars(
        select(SoftToken).where(SoftToken.user_id == user.id).order_by(SoftToken.id)
    ).all()


def _withdraw_temp_cards(s: Session, cards: Iterable[Credential], *, by: str, reason: str) -> int:
    """The temporary cards the user holds go back to stock: their certificates revoked,
    their chips wiped at the next desk (``tempcards.withdraw``). Returns how many
    certificates were revoked."""
    return sum(
        tempcards.withdraw_in(s, str(cred.id), by=by, reason=reason)
        for cred in cards
        if cred.kind == CredentialKind.TEMP_CARD and cred.state == TempCardState.ASSIGNED
    )


def _refuse_if_in_production(user: User, cards: Iterable[Credential]) -> None:
    busy = [c.id for c in cards if c.state == CardState.PRODUCING]
    if busy:
        raise PermanentError(
            f"card {busy[0]} of {user.email} is being produced at a station; "
            "try again when the station has finished it"
        )


def deactivate_user(
    store: Store,
    who: str,
    *,
    by: str,
    reason: str | None = None,
    reasons: Sequence[str] = (),
) -> int:
    """The user and every active card of theirs inactive; every valid certificate of
    theirs (cards and soft tokens) on hold. Returns how many certificates."""
    with store.tx() as s:
        return deactivate_user_in(s, who, by=by, reason=reason, reasons=reasons)


def deactivate_user_in(
    s: Session, who: str, *, by: str, reason: str | None, reasons: Sequence[str] = ()
) -> int:
    """``deactivate_user`` inside the caller's transaction."""
    why = f"{_BY_USER}: {_reason(reason, 'no reason given', reasons)}"
    user = find_user(s, who, lock=True)
    cards = _cards_of(s, user)
    _refuse_if_in_production(user, cards)
    transition(s, user, "deactivate", actor=by, reason=why)
    held = _withdraw_temp_cards(s, cards, by=by, reason=why)
    for cred in cards:
        if cred.kind == CredentialKind.TEMP_CARD:
            continue
        if cred.state == CardState.ACTIVE:
            transition(s, cred, "deactivate", actor=by, reason=why)
        if cred.state in (CardState.INACTIVE, CardState.ISSUED):
            certs = _certificates(s, states=[CertState.VALID], card=cred.id)
            held += _hold(s, certs, by=by, reason=why)
    for token in _tokens_of(s, user):
        certs = _certificates(s, states=[CertState.VALID], token=token.id)
        held += _hold(s, certs, by=by, reason=why)
    _crl(s, held, f"user {user.id} deactivated")
    return held


def reactivate_user(
    store: Store,
    who: str,
    *,
    by: str,
    reason: str | None = None,
    reasons: Sequence[str] = (),
) -> int:
    """Undo ``deactivate_user``: the user active, and each card and certificate the
    deactivation put out of use back in use. Returns how many certificates."""
    with store.tx() as s:
        return reactivate_user_in(s, who, by=by, reason=reason, reasons=reasons)


def reactivate_user_in(
    s: Session, who: str, *, by: str, reason: str | None, reasons: Sequence[str] = ()
) -> int:
    """``reactivate_user`` inside the caller's transaction."""
    why = _reason(reason, "user reactivated", reasons)
    user = find_user(s, who, lock=True)
    transition(s, user, "reactivate", actor=by, reason=why)
    released = 0
    for cred in _cards_of(s, user):
        if cred.state == CardState.INACTIVE and _put_out_by_user(s, cred.machine.name, cred.id):
            transition(s, cred, "reactivate", actor=by, reason=why)
        if cred.state in (CardState.ACTIVE, CardState.ISSUED):
            certs = [
                c
                for c in _certificates(s, states=[CertState.HOLD], card=cred.id)
                if _put_out_by_user(s, "certificate", c.id)
            ]
            released += _release(s, certs, by=by, reason=why)
    for token in _tokens_of(s, user):
        certs = [
            c
            for c in _certificates(s, states=[CertState.HOLD], token=token.id)
            if _put_out_by_user(s, "certificate", c.id)
        ]
        released += _release(s, certs, by=by, reason=why)
    _crl(s, released, f"user {user.id} reactivated")
    return released


def lock_user(store: Store, who: str, *, by: str, reason: RevocationReason | str) -> int:
    """Lock the user: produced cards locked and their certificates revoked, cards not yet
    produced cancelled, soft tokens revoked or cancelled. Only delete remains after.
    Returns how many certificates were revoked."""
    with store.tx() as s:
        return lock_user_in(s, who, by=by, reason=reason)


def lock_user_in(s: Session, who: str, *, by: str, reason: RevocationReason | str) -> int:
    """``lock_user`` inside the caller's transaction."""
    why = _lock_reason(reason)
    user = find_user(s, who, lock=True)
    cards = _cards_of(s, user)
    _refuse_if_in_production(user, cards)
    transition(s, user, "lock", actor=by, reason=why)
    revoked = _withdraw_temp_cards(s, cards, by=by, reason=f"user locked: {why}")
    for cred in cards:
        if cred.kind == CredentialKind.TEMP_CARD:
            continue
        if cred.state in _NOT_YET_PRODUCED:
            transition(s, cred, "cancel", actor=by, reason=f"user locked: {why}")
            continue
        if cred.machine.target(cred.state, "lock") is not None:
            transition(s, cred, "lock", actor=by, reason=why)
        certs = _certificates(s, states=[CertState.VALID, CertState.HOLD], card=cred.id)
        revoked += _revoke(s, certs, by=by, reason=why)
    for token in _tokens_of(s, user):
        if token.state in (SoftTokenState.REQUESTED, SoftTokenState.APPROVED):
            transition(s, token, "cancel", actor=by, reason=f"user locked: {why}")
        elif token.state == SoftTokenState.ISSUED:
            transition(s, token, "revoke", actor=by, reason=why)
        certs = _certificates(s, states=[CertState.VALID, CertState.HOLD], token=token.id)
        revoked += _revoke(s, certs, by=by, reason=why)
    _crl(s, revoked, f"user {user.id} locked")
    return revoked
