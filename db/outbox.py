"""The outbox: every job message is a row written in the transaction that needs it.

The relay (``workers.relay``) publishes unsent rows and marks them sent. Several relays
may run at once: on PostgreSQL each claims rows with ``FOR UPDATE SKIP LOCKED``; on
SQLite the write lock serialises them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import OutboxMessage, utcnow
from schemas.messages import JobMessage


def add(session: Session, message: JobMessage) -> OutboxMessage:
    row = OutboxMessage(
        queue=message.queue(),
        actor=message.actor,
        payload=message.model_dump(mode="json"),
    )
    session.add(row)
    return row


def add_all(session: Session, messages: Iterable[JobMessage]) -> None:
    for message in messages:
        add(session, message)


def claim_unsent(session: Session, limit: int = 100) -> Sequence[OutboxMessage]:
    """Lock up to ``limit`` unsent rows, oldest first, skipping rows another relay holds."""
    stmt = (
        select(OutboxMessage)
        .where(OutboxMessage.sent_at.is_(None))
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(stmt).all()


def mark_sent(session: Session, ids: Sequence[int]) -> None:
    if not ids:
        return
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(ids))
        .values(sent_at=utcnow(), publish_count=OutboxMessage.publish_count + 1)
    )


def unsent_count(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
        )
        or 0
    )
