"""/batches: a CSV batch import as the request body, and the batch decisions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from pydantic import AfterValidator

from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.approvals import approve_batch, reject_batch
from producers.batch_import import import_batch
from producers.principals import Caller
from schemas.api import BatchOut, DecisionOut, RequiredReasonIn

router = APIRouter(tags=["batches"])
Ctx = Annotated[ApiContext, Depends(context)]
MAX_CSV = 50 * 1024 * 1024
# The upload is written under its own name in a fresh folder, and its reject report is
# ``<stem>-<16 hex digits>-rejects.csv``: the name must be a plain file name (word
# characters, dots, dashes; not the folder "." or its parent "..") short enough in
# UTF-8 that the report's name still fits a file name's 255 bytes.
MAX_NAME_BYTES = 150


def _plain_file_name(name: str) -> str:
    if name in (".", "..") or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"must be a file name of at most {MAX_NAME_BYTES} bytes, not . or ..")
    return name


BatchName = Annotated[str, Query(pattern=r"^[\w.-]{1,100}$"), AfterValidator(_plain_file_name)]


@router.post("/batches", status_code=201)
def import_csv(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.import"))],
    csv: Annotated[bytes, Body(media_type="text/csv", max_length=MAX_CSV)],
    name: BatchName = "upload.csv",
) -> BatchOut:
    """The batch CSV (``cardline batch import``'s format) as the body. Rows are
    reported with their line numbers, and listed in the reject report named in
    ``reject_report`` (one per distinct file, however many share its name). A file
    naming a ``photo`` is refused whole (422, the line and ``photo``): photos cannot
    travel in an upload yet."""
    with tempfile.TemporaryDirectory(prefix="cardline-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(csv)
        report = import_batch(
            ctx.store,
            path,
            policy=ctx.policy,
            requested_by=who.actor,
            reject_dir=ctx.rejects_dir,
            allow_photos=False,
            report_by_content=True,
        )
    return BatchOut(
        batch_id=report.batch_id,
        users_created=report.users_created,
        users_updated=report.users_updated,
        cards_requested=report.cards_requested,
        rejected=[{"line": r.line, "field": r.field, "reason": r.reason} for r in report.rejected],
        reject_report=report.reject_report.name if report.reject_report else None,
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
