"""Batch approval: a second person approves or rejects a batch order and its cards.

The four-eyes rule holds here: whoever requested a batch can neither approve nor
reject it. A decision covers the batch and every card of it still waiting for one, in
one transaction; approved cards are queued for preparation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    approved card for preparation, in one transaction.

    Raises ``NotFound`` for an unknown batch, ``FourEyesViolation`` when ``by`` requested
    it, and ``StateConflict`` when it is no longer awaiting a decision; then nothing
    changes.
    """
    approver = _actor(by)
    with store.tx() as session:
        batch = _batch_awaiting(session, batch_id, approver)
        transition(session, batch, "approve", actor=approver, changes={"approved_by": approver})
        cards = _requested_cards(session, batch_id)
        for card in cards:
            # What the batch asked to change on an existing holder happens now.
            apply_requested_changes(session, card, by=batch.requested_by, unique_email=unique_email)
            transition(
                session,
                card,
                "approve",
                actor=approver,
                changes={"user_changes": None},
                messages=[PrepareCard(credential_id=card.id)],
            )
    return ApprovalReport(batch_id, approved=len(cards))


def reject_batch(store: Store, batch_id: int, *, by: str, reason: str) -> ApprovalReport:
    """Reject the batch and each of its cards still ``requested``, in one transaction.

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
        transition(session, batch, "reject", actor=rejecter, reason=why)
        cards = _requested_cards(session, batch_id)
        for card in cards:
            transition(session, card, "reject", actor=rejecter, reason=why)
    return ApprovalReport(batch_id, approved=0, rejected=len(cards))


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


def _requested_cards(session: Session, batch_id: int) -> Sequence[Credential]:
    stmt = (
        select(Credential)
        .where(Credential.batch_id == batch_id, Credential.state == CardState.REQUESTED)
        .order_by(Credential.id)
    )
    return session.scalars(stmt).all()
