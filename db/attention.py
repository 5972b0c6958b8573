"""Work that needs a person: a permanent failure recorded on its row, with the reason.

A retry cures a lost connection; it does not cure bad data, a sealed value that no
longer opens, or a bug. Such a failure is flagged here once (a second report of the
same open problem changes nothing) and the reconciler leaves the row alone until an
operator resolves the entry (``cardline attention resolve ID``), after which the row
is re-driven like any other stalled work.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Attention, utcnow
from db.transition import Unversioned, record
from schemas.errors import NotFound

REASON_MAX = 500


def flag(
    session: Session, *, entity: str, entity_id: object, wait: str, reason: str, actor: str
) -> Attention:
    """Record that ``entity`` ``entity_id`` needs attention; the open entry if one exists."""
    key = str(entity_id)
    existing = session.scalars(
        select(Attention).where(
            Attention.entity == entity,
            Attention.entity_id == key,
            Attention.wait == wait,
            Attention.resolved_at.is_(None),
        )
    ).first()
    if existing is not None:
        return existing
    row = Attention(
        entity=entity, entity_id=key, wait=wait, reason=reason[:REASON_MAX], actor=actor[:100]
    )
    session.add(row)
    session.flush()
    return row


def resolve(session: Session, attention_id: int, *, by: str) -> Attention:
    row = session.get(Attention, attention_id, with_for_update=True)
    if row is None or row.resolved_at is not None:
        raise NotFound("open attention item", attention_id)
    session.execute(
        update(Attention)
        .where(Attention.id == attention_id)
        .values(resolved_at=utcnow(), resolved_by=by[:100])
    )
    # An operator's decision that lets the reconciler try again: audited like any other.
    record(
        session,
        Unversioned("attention", attention_id, before="open", after="resolved"),
        "resolve",
        actor=by,
        reason=f"{row.entity} {row.entity_id} ({row.wait}): {row.reason}"[:500],
    )
    session.refresh(row)
    return row


def open_items(session: Session, *, limit: int = 100) -> Sequence[Attention]:
    return session.scalars(
        select(Attention).where(Attention.resolved_at.is_(None)).order_by(Attention.id).limit(limit)
    ).all()


def open_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Attention).where(Attention.resolved_at.is_(None))
        )
        or 0
    )


def is_open(session: Session, *, entity: str, entity_id: object) -> bool:
    return (
        session.scalar(
            select(Attention.id).where(
                Attention.entity == entity,
                Attention.entity_id == str(entity_id),
                Attention.resolved_at.is_(None),
            )
        )
        is not None
    )
