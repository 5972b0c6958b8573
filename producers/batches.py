"""Batch orders as operators follow them: each batch with its cards counted by state
(one grouped query per page of batches), newest first."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import BatchOrder, Credential
from producers.users import MAX_PAGE
from schemas.api import BatchListOut, BatchSummaryOut
from schemas.errors import NotFound, ValidationFailed
from schemas.states import BATCH


def _views(session: Session, batches: list[BatchOrder]) -> list[BatchSummaryOut]:
    ids = [b.id for b in batches]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = session.execute(
            select(Credential.batch_id, Credential.state, func.count())
            .where(Credential.batch_id.in_(ids))
            .group_by(Credential.batch_id, Credential.state)
        )
        for batch_id, state, count in rows:
            if batch_id is not None:  # the query asks only for these batches' cards
                counts[batch_id][state] = count
    return [
        BatchSummaryOut(
            id=b.id,
            name=b.name,
            state=b.state,
            requested_by=b.requested_by,
            approved_by=b.approved_by,
            created_at=b.created_at.isoformat(timespec="seconds"),
            card_count=b.card_count,
            rejected_rows=b.rejected_rows,
            reason=b.reason,
            cards=dict(sorted(counts[b.id].items())),
        )
        for b in batches
    ]


def list_batches(
    store: Store, *, state: str | None = None, page: int = 1, per_page: int = 50
) -> BatchListOut:
    if state is not None and state not in BATCH.states:
        raise ValidationFailed(f"one of {', '.join(sorted(BATCH.states))}", field="state")
    if not 1 <= page <= MAX_PAGE:
        raise ValidationFailed(f"between 1 and {MAX_PAGE}", field="page")
    if not 1 <= per_page <= 500:
        raise ValidationFailed("between 1 and 500", field="per_page")
    stmt = select(BatchOrder)
    if state is not None:
        stmt = stmt.where(BatchOrder.state == state)
    with store.read() as s:
        total = int(s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
        rows = list(
            s.scalars(
                stmt.order_by(BatchOrder.id.desc()).offset((page - 1) * per_page).limit(per_page)
            )
        )
        return BatchListOut(items=_views(s, rows), total=total, page=page, per_page=per_page)


def get_batch(store: Store, batch_id: int) -> BatchSummaryOut:
    with store.read() as s:
        batch = s.get(BatchOrder, batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        return _views(s, [batch])[0]
