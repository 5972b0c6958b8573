"""A decided batch's cards, settled a chunk at a time.

Deciding a batch of 100,000 cards in one transaction would hold the store's write lock
(SQLite) or the audit chain (PostgreSQL) for as long as that takes, and stop the line.
So a batch is decided in one short transaction (its own state, and its reason) and its
cards follow in chunks of ``CHUNK``, each its own transaction: approved with their
PrepareCard, or rejected with the batch's reason. Whoever decided the batch settles its
cards at once; when that process dies part-way, the reconciler finds the decided batch
with cards still ``requested`` (``workers.waits``, wait "batch decision") and settles
the rest with the same function. Settling twice is harmless: only cards still
``requested`` are touched, each guarded by its version.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import AuditEvent, BatchOrder, Credential
from db.transition import transition, transition_many
from schemas.errors import StateConflict
from schemas.messages import JobMessage, PrepareCard
from schemas.states import BatchState, CardState

CHUNK = 1000
_RETRIES = 3
# What a decided batch does to each of its cards still requested.
SETTLE: dict[str, str] = {
    BatchState.APPROVED: "approve",
    BatchState.REJECTED: "reject",
    BatchState.FAILED: "reject",
    BatchState.CANCELLED: "cancel",
}
# The cards each settling takes: a cancelled batch also takes back its cards approved
# or ready (not yet at a station); a card at a station finishes.
SETTLES: dict[str, tuple[str, ...]] = {
    "approve": (CardState.REQUESTED,),
    "reject": (CardState.REQUESTED,),
    "cancel": (CardState.REQUESTED, CardState.APPROVED, CardState.READY),
}


def _prepare(card_id: int) -> list[JobMessage]:
    return [PrepareCard(credential_id=card_id)]


def settle_chunk(session: Session, batch: BatchOrder, *, limit: int = CHUNK) -> int:
    """Settle up to ``limit`` of ``batch``'s cards still ``requested`` as its state says,
    inside the caller's transaction; return how many. A batch not decided settles none.

    Cards with changes to their holder kept on them (``user_changes``) are approved by
    whoever decided the batch, in its first transaction: here they are only rejected.
    """
    action = SETTLE.get(batch.state)
    if action is None:
        return 0
    stmt = (
        select(Credential.id)
        .where(Credential.batch_id == batch.id, Credential.state.in_(SETTLES[action]))
        .order_by(Credential.id)
        .limit(limit)
        # Two settlers (the decider and the reconciler) take different cards.
        .with_for_update(skip_locked=True)
    )
    if action == "approve":
        stmt = stmt.where(Credential.user_changes.is_(None))
    ids = list(session.scalars(stmt))
    if not ids:
        return 0
    actor = (
        (batch.approved_by or batch.requested_by)
        if action == "approve"
        else _decider(session, batch)
    )
    return transition_many(
        session,
        Credential,
        ids,
        action,
        actor=actor,
        reason=batch.reason if action != "approve" else None,
        changes={"user_changes": None} if action == "approve" else None,
        messages=_prepare if action == "approve" else None,
    )


def _decider(session: Session, batch: BatchOrder) -> str:
    # The batch's own event names who rejected or cancelled it (or the import that failed).
    actor = session.scalar(
        select(AuditEvent.actor)
        .where(
            AuditEvent.entity == "batch",
            AuditEvent.entity_id == str(batch.id),
            AuditEvent.to_state == batch.state,
        )
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    return actor or batch.requested_by


def abandon(session: Session, batch: BatchOrder, *, actor: str, reason: str) -> bool:
    """End an import that will not finish: the batch ``importing -> failed`` with
    ``reason`` (its cards still ``requested`` are then rejected by ``settle``), and its
    file's SHA-256 let go, so the same file may be imported again. False when the batch
    is no longer importing (finished, or abandoned already)."""
    if batch.state != BatchState.IMPORTING:
        return False
    transition(
        session,
        batch,
        "abandon",
        actor=actor,
        reason=reason,
        changes={"reason": reason[:500], "source_sha256": None},
    )
    return True


def settle(store: Store, batch_id: int, *, limit: int = CHUNK) -> int:
    """Settle every card of the decided batch still ``requested``, one transaction per
    chunk; return how many. A chunk another settler changed meanwhile is read again
    (at most a few times in a row: then the conflict is raised)."""
    done = conflicts = 0
    while True:
        try:
            with store.tx() as session:
                batch = session.get(BatchOrder, batch_id)
                count = settle_chunk(session, batch, limit=limit) if batch else 0
        except StateConflict:
            conflicts += 1
            if conflicts > _RETRIES:
                raise
            continue
        conflicts = 0
        if not count:
            return done
        done += count
