"""Batch approval: a second person approves or rejects a batch order and its cards.

The four-eyes rule holds here: whoever requested a batch can neither approve nor
reject it. A decision covers the batch and every card of it still waiting for one.
The batch is decided in one short transaction, together with the cards that carry
changes to their holder (those changes are made then); the other cards follow a
thousand per transaction (``db.batches``), so deciding 100,000 cards never holds the
store for long. Approved cards are queued for preparation. Should this process die
part-way, the reconciler settles the rest the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.batches import settle
from db.engine import Store
from db.models import BatchOrder, Credential
from db.transition import transition
from producers.principals import check_four_eyes
from producers.users import apply_requested_changes
from schemas.errors import NotFound, ValidationFailed
from schemas.messages import PrepareCard
from schemas.states import CardState

# The width of BatchOrder.approved_by and of the audit actor.
_MAX_ACTOR = 100
_MAX_REASON = 500


@dataclass(frozen=True)
class ApprovalReport:
    """The decision on one batch: how many of its cards it approved or rejected."""

    batch_id: int
    approved: int
    rejected: int = 0


def approve_batch(
    store: Store, batch_id: int, *, by: str, unique_email: bool = True
) -> ApprovalReport:
    """Approve the batch and each of its cards still ``requested``, queueing every
    approved card for preparation.

    Raises ``NotFound`` for an unknown batch, ``FourEyesViolation`` when ``by`` requested
    it, and ``StateConflict`` when it is no longer awaiting a decision (or is still
    being imported); then nothing changes.
    """
    approver = _actor(by)
    with store.tx() as session:
        batch = _batch_awaiting(session, batch_id, approver)
        transition(session, batch, "approve", actor=approver, changes={"approved_by": approver})
        changed = approve_changing_cards(
            session,
            batch_id,
            by=approver,
            requested_by=batch.requested_by,
            unique_email=unique_email,
        )
    return ApprovalReport(batch_id, approved=changed + settle(store, batch_id))


def approve_changing_cards(
    session: Session, batch_id: int, *, by: str, requested_by: str, unique_email: bool = True
) -> int:
    """Inside the transaction that approves batch ``batch_id``: approve each of its cards
    that carries changes to its holder, making those changes (as ``requested_by``, who
    asked for them); return how many. The batch's other cards are settled after."""
    cards = _changing_cards(session, batch_id)
    for card in cards:
        apply_requested_changes(session, card, by=requested_by, unique_email=unique_email)
        transition(
            session,
            card,
            "approve",
            actor=by,
            changes={"user_changes": None},
            messages=[PrepareCard(credential_id=card.id)],
        )
    return len(cards)


def reject_batch(store: Store, batch_id: int, *, by: str, reason: str) -> ApprovalReport:
    """Reject the batch and each of its cards still ``requested``.

    Raises like ``approve_batch``, and ``ValidationFailed`` when ``reason`` is empty or
    longer than 500 characters.
    """
    rejecter = _actor(by)
    why = reason.strip()
    if not why or len(why) > _MAX_REASON:
        raise ValidationFailed(
            f"a reason of 1 to {_MAX_REASON} characters is required", field="reason"
        )
    with store.tx() as session:
        batch = _batch_awaiting(session, batch_id, rejecter)
        transition(session, batch, "reject", actor=rejecter, reason=why, changes={"reason": why})
    return ApprovalReport(batch_id, approved=0, rejected=settle(store, batch_id))


def _actor(by: str) -> str:
    actor = by.strip()
    if not actor or len(actor) > _MAX_ACTOR:
        raise ValidationFailed(f"a name of 1 to {_MAX_ACTOR} characters is required", field="by")
    return actor


def _batch_awaiting(session: Session, batch_id: int, decider: str) -> BatchOrder:
    """The batch, locked; refused to its own requester."""
    batch = session.get(BatchOrder, batch_id, with_for_update=True)
    if batch is None:
        raise NotFound("batch", batch_id)
    check_four_eyes(decider, batch.requested_by, f"batch {batch_id}")
    return batch


def _changing_cards(session: Session, batch_id: int) -> Sequence[Credential]:
    """The batch's cards still ``requested`` that carry changes to their holder."""
    stmt = (
        select(Credential)
        .where(
            Credential.batch_id == batch_id,
            Credential.state == CardState.REQUESTED,
            Credential.user_changes.is_not(None),
        )
        .order_by(Credential.id)
    )
    return session.scalars(stmt).all()
