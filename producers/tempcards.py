"""Temporary cards: stock runs, assign, extend, withdraw (lock is ``lifecycle.lock_card``).

A stock run is a batch order of N temporary cards without holders; once approved (or
at once, when the policy asks no approval) the line produces them as ``unassigned``,
each with device certificates. Assigning one to a user re-certifies its keys in the
user's name and sends the user its PIN letter (``RecertifyCard`` with ``pin_letter``);
the assignment lasts ``temp_card_validity_days`` and ``extend`` adds to it, never past
the card's own validity. Withdrawing revokes the user's certificates and puts the card
back in stock.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import outbox, updates
from db.engine import Store
from db.models import BatchOrder, Certificate, Credential, User, utcnow
from db.transition import create, transition
from producers.lookup import find_card, find_user
from schemas.batch import LINE_NAME
from schemas.errors import PermanentError, StateConflict, ValidationFailed
from schemas.messages import PrepareCard, PublishCrl
from schemas.policy import Policy
from schemas.states import (
    BatchState,
    CertState,
    CredentialKind,
    RevocationReason,
    TempCardState,
    UpdateKind,
    UserState,
)

MAX_STOCK_RUN = 1000  # one transaction: a bigger run is several runs


def request_stock(
    store: Store, count: int, *, by: str, policy: Policy, line: str | None = None
) -> tuple[int, list[int]]:
    """A stock run of ``count`` temporary cards in one batch order: (batch id, card ids)."""
    if not 1 <= count <= MAX_STOCK_RUN:
        raise ValidationFailed(f"between 1 and {MAX_STOCK_RUN}", field="count")
    chosen = line or policy.default_line
    if not LINE_NAME.match(chosen):
        raise ValidationFailed("lower-case letters, digits, '-' or '_'", field="line")
    approved = not policy.temp_card_approval_required
    with store.tx() as s:
        batch = create(
            s,
            BatchOrder(
                name=f"temporary card stock run of {count}",
                requested_by=by,
                approved_by="policy:no-approval" if approved else None,
                state=BatchState.APPROVED if approved else BatchState.REQUESTED,
                card_count=count,
            ),
            actor=by,
            reason="temporary card stock run",
        )
        ids = []
        for _ in range(count):
            card = Credential(
                kind=CredentialKind.TEMP_CARD,
                batch_id=batch.id,
                line=chosen,
                requested_by=by,
                state=TempCardState.APPROVED if approved else TempCardState.REQUESTED,
            )
            create(s, card, actor=by, reason=f"stock run {batch.id}")
            if approved:
                outbox.add(s, PrepareCard(credential_id=card.id))
            ids.append(card.id)
        return batch.id, ids


def _temp_card(session: Session, card: str, action: str) -> Credential:
    """Temporary card ``card``, locked. A permanent card's machine has no ``action``:
    refused as any action from a state it does not leave is (allowed from nowhere)."""
    cred = find_card(session, card, lock=True)
    if cred.kind != CredentialKind.TEMP_CARD:
        raise StateConflict(
            cred.machine.name, cred.id, action, cred.state, (), detail="not a temporary card"
        )
    return cred


def _days(days: int | None, policy: Policy) -> int:
    chosen = policy.temp_card_validity_days if days is None else days
    if not 1 <= chosen <= 366:
        raise ValidationFailed("between 1 and 366 days", field="days")
    return chosen


def _until(cred: Credential, start: dt.datetime, days: int) -> dt.datetime:
    end = start + dt.timedelta(days=days)
    return min(end, cred.valid_until) if cred.valid_until else end


def _assigned_to(session: Session, user: User) -> int:
    stmt = select(func.count()).where(
        Credential.user_id == user.id,
        Credential.kind == CredentialKind.TEMP_CARD,
        Credential.state == TempCardState.ASSIGNED,
    )
    return int(session.scalar(stmt) or 0)


def _check_may_hold(session: Session, user: User, policy: Policy) -> None:
    """PermanentError unless ``user`` is active and may hold one more temporary card."""
    if user.state != UserState.ACTIVE:
        raise PermanentError(f"user {user.email} is {user.state}; no card can be assigned")
    held = _assigned_to(session, user)
    if held >= policy.temp_cards_per_user:
        raise PermanentError(
            f"user {user.email} already holds {held} temporary card(s); "
            f"the policy allows {policy.temp_cards_per_user}"
        )


def assign_in(
    session: Session,
    cred: Credential,
    user: User,
    *,
    by: str,
    policy: Policy,
    days: int | None = None,
    why: str = "assigned",
) -> str:
    """Assign ``cred`` (unassigned) to ``user`` inside the caller's transaction."""
    # A card that cannot be assigned is refused by transition(), naming its state,
    # whoever the user is; only an assignable card is turned away for the user's sake.
    if cred.machine.target(cred.state, "assign") is not None:
        _check_may_hold(session, user, policy)
    until = _until(cred, utcnow(), _days(days, policy))
    state = transition(
        session,
        cred,
        "assign",
        actor=by,
        reason=f"{why} to {user.email}",
        changes={"user_id": user.id, "assigned_until": until},
    )
    # Written at the card's next desk: new keys and certificates in the holder's name
    # valid until the end of the assignment, and a new PIN (its letter then).
    updates.request_temp_card_update(
        session, cred, UpdateKind.ASSIGN, by=by, usages=_usages(policy), not_after=until
    )
    return state


def _usages(policy: Policy) -> list[str]:
    return [u.value for u in policy.on_card_usages]


def assign(
    store: Store, card: str, user: str, *, by: str, policy: Policy, days: int | None = None
) -> str:
    with store.tx() as s:
        return assign_at(s, card, user, by=by, policy=policy, days=days)


def assign_at(
    session: Session, card: str, user: str, *, by: str, policy: Policy, days: int | None = None
) -> str:
    """``assign`` inside the caller's transaction."""
    cred = _temp_card(session, card, "assign")
    holder = find_user(session, user, lock=True)
    return assign_in(session, cred, holder, by=by, policy=policy, days=days)


def extend(store: Store, card: str, *, by: str, policy: Policy, days: int | None = None) -> str:
    """Lengthen the assignment by ``days`` (default: the policy's validity)."""
    with store.tx() as s:
        return extend_in(s, card, by=by, policy=policy, days=days)


def extend_in(
    session: Session, card: str, *, by: str, policy: Policy, days: int | None = None
) -> str:
    """``extend`` inside the caller's transaction."""
    cred = _temp_card(session, card, "extend")
    start = max(cred.assigned_until or utcnow(), utcnow())
    until = _until(cred, start, _days(days, policy))
    state = transition(
        session,
        cred,
        "extend",
        actor=by,
        reason="assignment extended",
        changes={"assigned_until": until},
    )
    # New certificates for the new period and a new PIN, at the card's next desk.
    updates.request_temp_card_update(
        session, cred, UpdateKind.EXTEND, by=by, usages=_usages(policy), not_after=until
    )
    return state


def withdraw(store: Store, card: str, *, by: str, reason: str | None = None) -> int:
    """Take the card back: the holder's certificates revoked, the card in stock again.
    Returns how many certificates were revoked."""
    with store.tx() as s:
        return withdraw_in(s, card, by=by, reason=reason)


def withdraw_in(session: Session, card: str, *, by: str, reason: str | None = None) -> int:
    """``withdraw`` inside the caller's transaction."""
    cred = _temp_card(session, card, "withdraw")
    transition(
        session,
        cred,
        "withdraw",
        actor=by,
        reason=(reason or "withdrawn").strip()[:400],
        changes={"user_id": None, "assigned_until": None, "pin_letter_path": None},
    )
    certs = session.scalars(
        select(Certificate).where(
            Certificate.credential_id == cred.id,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
    ).all()
    for cert in certs:
        transition(
            session,
            cert,
            "revoke",
            actor=by,
            reason=RevocationReason.CESSATION_OF_OPERATION,
            changes={
                "revoked_at": utcnow(),
                "revocation_reason": RevocationReason.CESSATION_OF_OPERATION,
            },
        )
    if certs:
        outbox.add(session, PublishCrl(reason=f"temporary card {cred.id} withdrawn"))
    # Nothing of this holder may be reusable by the next: every key erased from the
    # chip and PIN and PUK rotated, at the card's next desk.
    updates.request_temp_card_update(session, cred, UpdateKind.WIPE, by=by, usages=())
    return len(certs)


def first_in_stock(session: Session) -> Credential | None:
    """The oldest unassigned temporary card, locked, for an assignment."""
    return session.scalars(
        select(Credential)
        .where(
            Credential.kind == CredentialKind.TEMP_CARD,
            Credential.state == TempCardState.UNASSIGNED,
        )
        .order_by(Credential.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
