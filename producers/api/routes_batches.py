"""/batches: a CSV batch import as the request body, and the batch decisions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.approvals import approve_batch, reject_batch
from producers.batch_import import import_batch
from producers.principals import Caller
from schemas.api import BatchOut, DecisionOut, RequiredReasonIn

router = APIRouter(tags=["batches"])
Ctx = Annotated[ApiContext, Depends(context)]
MAX_CSV = 50 * 1024 * 1024


@router.post("/batches", status_code=201)
def import_csv(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.import"))],
    csv: Annotated[bytes, Body(media_type="text/csv", max_length=MAX_CSV)],
    name: Annotated[str, Query(pattern=r"^[\w.-]{1,100}$")] = "upload.csv",
) -> BatchOut:
    """The batch CSV (``cardline batch import``'s format) as the body. Rows are
    reported with their line numbers; a ``photo`` column cannot point anywhere here."""
    with tempfile.TemporaryDirectory(prefix="cardline-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(csv)
        report = import_batch(
            ctx.store, path, policy=ctx.policy, requested_by=who.actor, reject_dir=ctx.rejects_dir
        )
    return BatchOut(
        batch_id=report.batch_id,
        users_created=report.users_created,
        users_updated=report.users_updated,
        cards_requested=report.cards_requested,
        rejected=[{"line": r.line, "field": r.field, "reason": r.reason} for r in report.rejected],
    )


@router.post("/batches/{batch_id}/approve")
def approve(
    batch_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("batch.decide"))]
) -> DecisionOut:
    report = approve_batch(ctx.store, batch_id, by=who.actor)
    return DecisionOut(batch_id=batch_id, approved=report.approved, rejected=report.rejected)


@router.post("/batches/{batch_id}/reject")
def reject(
    batch_id: RowId,
    body: RequiredReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.decide"))],
) -> DecisionOut:
    report = reject_batch(ctx.store, batch_id, by=who.actor, reason=body.reason)
    return DecisionOut(batch_id=batch_id, approved=report.approved, rejected=report.rejected)
