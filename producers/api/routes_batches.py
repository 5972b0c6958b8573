"""/batches: a CSV batch import as the request body, and the batch decisions.

The upload is streamed to a temporary file (never held whole in memory) and refused
with 413 past ``MAX_CSV`` bytes; the import then runs in a worker thread. A store too
busy to take it is answered 503 with ``Retry-After``, having written nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from producers import batches
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, PageNumber, RowId
from producers.api.errors import body
from producers.approvals import approve_batch, reject_batch
from producers.batch_import import ImportReport, import_batch
from producers.principals import Caller
from schemas.api import BatchListOut, BatchOut, BatchSummaryOut, DecisionOut, RequiredReasonIn

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


_CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class _TooLarge(Exception):
    pass


@router.post("/batches", status_code=201, response_model=BatchOut, openapi_extra=_CSV_BODY)
async def import_csv(
    request: Request,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.import"))],
    name: BatchName = "upload.csv",
    ignore_column: Annotated[list[str] | None, Query()] = None,
) -> BatchOut | JSONResponse:
    """The batch CSV (``cardline batch import``'s format) as the body. Rows are
    reported with their line numbers, and listed in the reject report named in
    ``reject_report`` (one per distinct file, however many share its name). The body is
    streamed to a file; past ``MAX_CSV`` bytes it is refused (413). ``ignore_column``
    (repeatable) names a column of the sender's own to read and drop; any other unknown
    column refuses the file. A file naming a ``photo`` is refused whole (422, the line
    and ``photo``): photos cannot travel in an upload yet. 503 with ``Retry-After``
    when the store is busy."""
    with tempfile.TemporaryDirectory(prefix="cardline-upload-") as folder:
        path = Path(folder) / name
        try:
            await _receive(request, path)
        except _TooLarge:
            message = f"the CSV is larger than {MAX_CSV} bytes"
            return JSONResponse(body("too_large", message, "csv"), status_code=413)
        # A busy store raises StoreBusy, a TransientError: 503 with its Retry-After.
        report: ImportReport = await run_in_threadpool(
            import_batch,
            ctx.store,
            path,
            policy=ctx.policy,
            requested_by=who.actor,
            reject_dir=ctx.rejects_dir,
            allow_photos=False,
            report_by_content=True,
            ignore_columns=ignore_column or (),
        )
    return BatchOut(
        batch_id=report.batch_id,
        users_created=report.users_created,
        users_updated=report.users_updated,
        cards_requested=report.cards_requested,
        rejected=[{"line": r.line, "field": r.field, "reason": r.reason} for r in report.rejected],
        reject_report=report.reject_report.name if report.reject_report else None,
    )


async def _receive(request: Request, path: Path) -> None:
    """Write the request body to ``path`` as it arrives; ``_TooLarge`` past ``MAX_CSV``
    bytes (said by Content-Length, or counted)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_CSV:
        raise _TooLarge
    size = 0
    with path.open("xb") as fh:
        path.chmod(0o600)
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_CSV:
                raise _TooLarge
            fh.write(chunk)


@router.get("/batches")
def list_batches(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.read"))],
    state: str | None = None,
    page: PageNumber = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> BatchListOut:
    """Batches, newest first, each with its cards counted by state."""
    return batches.list_batches(ctx.store, state=state, page=page, per_page=per_page)


@router.get("/batches/{batch_id}")
def get_batch(
    batch_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("batch.read"))]
) -> BatchSummaryOut:
    """One batch: its state, requester and approver, rejects, cards by state."""
    return batches.get_batch(ctx.store, batch_id)


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
